package volume

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/nbd"
)

// hostRule is one --nbd-allow-host entry: a host name, or an address
// prefix (a single address is a full-length prefix).
type hostRule struct {
	name   string
	prefix netip.Prefix
}

// ParseAllowHosts checks --nbd-allow-host values: a host name
// (nbd1.storage.example), an address (10.0.0.5, fd00::5) or a CIDR prefix
// (10.0.0.0/24).
func ParseAllowHosts(list []string) error {
	_, err := parseAllowHosts(list)
	return err
}

func parseAllowHosts(list []string) ([]hostRule, error) {
	out := make([]hostRule, 0, len(list))
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, hostRule{prefix: p.Masked()})
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			out = append(out, hostRule{prefix: netip.PrefixFrom(a, a.BitLen())})
			continue
		}
		name, ok := hostName(s)
		if !ok {
			return nil, fmt.Errorf("--nbd-allow-host %q: want a host name, an IP address or a CIDR prefix", s)
		}
		out = append(out, hostRule{name: name})
	}
	return out, nil
}

// hostName normalises a DNS host name (lower case, no trailing dot) and
// says whether it is one.
func hostName(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	if s == "" || len(s) > 253 {
		return "", false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", false
			}
		}
	}
	return s, true
}

// confineNBD checks an NBD target against the node's allowlists and returns
// the dialer that reaches exactly what was checked, and a release for what
// the check holds open. It is only used for confined (task) endpoints.
func confineNBD(ctx context.Context, t nbd.Target, opts Options) (func(context.Context) (net.Conn, error), func(), error) {
	if t.Network == "unix" {
		return confineSocket(t.Address, opts.NBDSocketDirs)
	}
	return confineHost(ctx, t.Address, opts.NBDAllowHosts)
}

// confineSocket opens the socket beneath one of dirs with openat2
// (RESOLVE_BENEATH, no symlinks at all), checks it is a socket, and dials
// that very inode through its O_PATH fd, so that no rename or symlink swap
// between the check and the connect can point the connection elsewhere.
func confineSocket(path string, dirs []string) (func(context.Context) (net.Conn, error), func(), error) {
	if len(dirs) == 0 {
		return nil, nil, fmt.Errorf("%w: nbd+unix socket %s: this node has no --nbd-socket-dir, so nbd+unix endpoints of tasks are refused", ErrNotAllowed, path)
	}
	if !filepath.IsAbs(path) {
		return nil, nil, fmt.Errorf("%w: nbd+unix socket %q: the path must be absolute", ErrInvalid, path)
	}
	for _, dir := range dirs {
		rel, ok := beneath(dir, path)
		if !ok {
			continue
		}
		dirFD, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open --nbd-socket-dir %s: %w", dir, err)
		}
		fd, err := unix.Openat2(dirFD, rel, &unix.OpenHow{
			// No O_NOFOLLOW: with it, O_PATH would open a final
			// symlink itself; without it, RESOLVE_NO_SYMLINKS refuses it.
			Flags:   unix.O_PATH | unix.O_CLOEXEC,
			Resolve: resolveBeneath | unix.RESOLVE_NO_SYMLINKS,
		})
		unix.Close(dirFD)
		switch {
		case escapeError(err):
			return nil, nil, fmt.Errorf("%w: nbd+unix socket %s leaves --nbd-socket-dir %s (symlink or ..)", ErrNotAllowed, path, dir)
		case errors.Is(err, unix.ENOENT):
			// The server may not be up yet, or be restarting.
			return nil, nil, fmt.Errorf("%w: nbd+unix socket %s does not exist: %w", nbd.ErrUnreachable, path, err)
		case err != nil:
			return nil, nil, fmt.Errorf("nbd+unix socket %s: %w", path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("nbd+unix socket %s: %w", path, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("%w: nbd+unix socket %s is not a socket", ErrInvalid, path)
		}
		// connect(2) follows the fd's magic link to the inode checked.
		via := fmt.Sprintf("/proc/self/fd/%d", fd)
		dial := func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", via)
		}
		return dial, func() { unix.Close(fd) }, nil
	}
	return nil, nil, fmt.Errorf("%w: nbd+unix socket %s is not under any --nbd-socket-dir (%s)", ErrNotAllowed, path, strings.Join(dirs, ", "))
}

// confineHost checks an nbd:// host against the allowlist. A host name
// listed by name is dialled as named. Otherwise the host's addresses (an
// address literal, or what the name resolves to) must fall in a listed
// prefix, and the dialer connects only to those checked addresses, so a
// second DNS answer cannot lead elsewhere.
func confineHost(ctx context.Context, address string, allow []string) (func(context.Context) (net.Conn, error), func(), error) {
	if len(allow) == 0 {
		return nil, nil, fmt.Errorf("%w: nbd://%s: this node has no --nbd-allow-host, so nbd:// endpoints of tasks are refused", ErrNotAllowed, address)
	}
	rules, err := parseAllowHosts(allow)
	if err != nil {
		return nil, nil, err
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: nbd://%s: %v", ErrInvalid, address, err)
	}
	inPrefix := func(a netip.Addr) bool {
		a = a.Unmap()
		for _, r := range rules {
			if r.name == "" && r.prefix.Contains(a) {
				return true
			}
		}
		return false
	}
	refuse := func(why string) error {
		return fmt.Errorf("%w: nbd://%s: %s not in --nbd-allow-host (%s)", ErrNotAllowed, address, why, strings.Join(allow, ", "))
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || !inPrefix(a) {
			return nil, nil, refuse("host " + host + " is")
		}
		addrs = []netip.Addr{a}
	} else {
		name, ok := hostName(host)
		if !ok {
			return nil, nil, fmt.Errorf("%w: nbd://%s: %q is not a host name", ErrInvalid, address, host)
		}
		for _, r := range rules {
			if r.name == name {
				dial := func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", address)
				}
				return dial, func() {}, nil
			}
		}
		resolved, err := net.DefaultResolver.LookupNetIP(ctx, "ip", name)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: nbd://%s: resolve %s: %w", nbd.ErrUnreachable, address, name, err)
		}
		for _, a := range resolved {
			if inPrefix(a) {
				addrs = append(addrs, a.Unmap())
			}
		}
		if len(addrs) == 0 {
			return nil, nil, refuse(fmt.Sprintf("host %s (addresses %v) is", name, resolved))
		}
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		var errs []error
		for _, a := range addrs {
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
	return dial, func() {}, nil
}
