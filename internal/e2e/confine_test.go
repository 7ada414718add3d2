package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"
)

// There is no systemd (PID 1) on the test machines, so the unit's
// restrictions cannot be applied by systemd itself. The "confine" helper
// applies the ones that decide whether taskd still works, from the unit
// file, and then executes taskd:
//   - ProtectSystem=strict with the state directory writable: every mount
//     but /dev, /proc and /sys read-only, CONFINE_RW bind-mounted writable
//     (the helper runs under `unshare --mount`);
//   - CapabilityBoundingSet: every other capability dropped from the
//     bounding set, so that taskd, as root, holds only those;
//   - MemoryDenyWriteExecute: prctl(PR_SET_MDWE), which refuses writable
//     and executable mappings as systemd's seccomp rules do, and is kept
//     across execve;
//   - NoNewPrivileges, and SystemCallFilter with SystemCallErrorNumber=EPERM:
//     a seccomp filter allowing exactly the system calls the unit's filter
//     allows (systemd-analyze expands the groups) and failing the others
//     with EPERM.
// Not applied: the device policy, address families, namespaces, personality,
// PrivateTmp, and the Protect*= file systems.

// confineMain runs as TASKD_E2E_HELPER=confine: os.Args[1:] is the command
// to run confined; CONFINE_CAPS, CONFINE_SYSCALLS and CONFINE_RW say how.
func confineMain() int {
	// Bounding set, no_new_privs and the seccomp filter belong to the
	// thread; exec from the same one.
	runtime.LockOSThread()
	if err := confine(os.Getenv("CONFINE_CAPS"), os.Getenv("CONFINE_SYSCALLS"), os.Getenv("CONFINE_RW")); err != nil {
		fmt.Fprintln(os.Stderr, "confine:", err)
		return 1
	}
	env := slices.DeleteFunc(os.Environ(), func(e string) bool {
		return strings.HasPrefix(e, "CONFINE_") || strings.HasPrefix(e, "TASKD_E2E_HELPER=")
	})
	err := unix.Exec(os.Args[1], os.Args[1:], env)
	fmt.Fprintln(os.Stderr, "confine: exec:", err)
	return 1
}

func confine(caps, syscalls, rw string) error {
	if err := readOnlyMounts(); err != nil {
		return err
	}
	for _, p := range filepath.SplitList(rw) {
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT, ""); err != nil {
			return fmt.Errorf("make %s writable: %w", p, err)
		}
	}
	keep := map[int]bool{}
	for _, c := range strings.Fields(caps) {
		n, ok := capNumbers[c]
		if !ok {
			return fmt.Errorf("unknown capability %s", c)
		}
		keep[n] = true
	}
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return err
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if !keep[c] {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("drop capability %d: %w", c, err)
			}
		}
	}
	if err := unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0); err != nil {
		return fmt.Errorf("memory-deny-write-execute: %w", err)
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return err
	}
	var names []string
	for _, s := range strings.Split(syscalls, ",") {
		// The groups name calls of other architectures too.
		if _, ok := info.SyscallNames[s]; ok && !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	return seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionErrno, // EPERM, as SystemCallErrorNumber=EPERM
			Syscalls:      []seccomp.SyscallGroup{{Action: seccomp.ActionAllow, Names: names}},
		},
	})
}

// readOnlyMounts makes every mount read-only but those under /dev, /proc
// and /sys, as ProtectSystem=strict does, keeping their other flags.
func readOnlyMounts() error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	flags := map[string]uintptr{"nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV, "noexec": unix.MS_NOEXEC,
		"noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME, "relatime": unix.MS_RELATIME}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		point := strings.ReplaceAll(fields[4], `\040`, " ")
		if isAPIFS(point) {
			continue
		}
		fl := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
		for _, o := range strings.Split(fields[5], ",") {
			fl |= flags[o]
		}
		if err := unix.Mount("", point, "", fl, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", point, err)
		}
	}
	return sc.Err()
}

func isAPIFS(point string) bool {
	for _, api := range []string{"/dev", "/proc", "/sys"} {
		if point == api || strings.HasPrefix(point, api+"/") {
			return true
		}
	}
	return false
}

var capNumbers = map[string]int{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"CAP_FOWNER": unix.CAP_FOWNER, "CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP, "CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST,
	"CAP_NET_ADMIN": unix.CAP_NET_ADMIN, "CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK,
	"CAP_IPC_OWNER": unix.CAP_IPC_OWNER, "CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE, "CAP_SYS_PACCT": unix.CAP_SYS_PACCT,
	"CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN, "CAP_SYS_BOOT": unix.CAP_SYS_BOOT, "CAP_SYS_NICE": unix.CAP_SYS_NICE,
	"CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "CAP_SYS_TIME": unix.CAP_SYS_TIME, "CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG,
	"CAP_MKNOD": unix.CAP_MKNOD, "CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "CAP_SETFCAP": unix.CAP_SETFCAP, "CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE,
	"CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN, "CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "CAP_AUDIT_READ": unix.CAP_AUDIT_READ, "CAP_PERFMON": unix.CAP_PERFMON,
	"CAP_BPF": unix.CAP_BPF, "CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// capMask is the /proc/PID/status form of a capability list.
func capMask(t *testing.T, caps string) string {
	var m uint64
	for _, c := range strings.Fields(caps) {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("unknown capability %s", c)
		}
		m |= 1 << n
	}
	return fmt.Sprintf("%016x", m)
}

// unitSyscalls is the set of system calls the unit's SystemCallFilter=
// lines allow, as systemd computes it: the allow list (with @default,
// which systemd adds to every allow list) minus the ~ lists.
func unitSyscalls(t *testing.T, filters []string) []string {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "syscall-filter").Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	groups := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(string(out), "\n") {
		switch s := strings.TrimSpace(line); {
		case strings.HasPrefix(line, "@"):
			cur = s
		case cur != "" && s != "" && !strings.HasPrefix(s, "#"):
			groups[cur] = append(groups[cur], s)
		}
	}
	var expand func(string, map[string]bool)
	expand = func(item string, into map[string]bool) {
		if !strings.HasPrefix(item, "@") {
			into[item] = true
			return
		}
		members, ok := groups[item]
		if !ok {
			t.Fatalf("systemd-analyze knows no group %s", item)
		}
		for _, m := range members {
			expand(m, into)
		}
	}
	allow := map[string]bool{}
	expand("@default", allow)
	for i, f := range filters {
		deny := strings.HasPrefix(f, "~")
		if deny == (i == 0) {
			t.Fatalf("SystemCallFilter=%q: want one allow list followed by ~ lists", f)
		}
		set := map[string]bool{}
		for _, item := range strings.Fields(strings.TrimPrefix(f, "~")) {
			expand(item, set)
		}
		for s := range set {
			if deny {
				delete(allow, s)
			} else {
				allow[s] = true
			}
		}
	}
	names := make([]string, 0, len(allow))
	for s := range allow {
		names = append(names, s)
	}
	slices.Sort(names)
	return names
}

// wxProbeMain runs as TASKD_E2E_HELPER=wxprobe: it maps memory writable
// and executable, and exits 0 if that was refused, 1 if it worked.
func wxProbeMain() int {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("refused:", err)
		return 0
	}
	_ = unix.Munmap(b)
	fmt.Println("a writable and executable mapping was allowed")
	return 1
}
