package harness

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// NBDServer is a qemu-nbd or nbdkit process serving one export on a unix
// socket.
type NBDServer struct {
	*Proc
	Socket string
	Addr   string // host:port when served over TCP
	Export string
}

// URI is the nbd:// (TCP) or nbd+unix URI of the export.
func (s *NBDServer) URI() string {
	if s.Addr != "" {
		return fmt.Sprintf("nbd://%s/%s", s.Addr, s.Export)
	}
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", s.Export, s.Socket)
}

// Stop ends the server (SIGTERM, then SIGKILL) and waits for it.
func (s *NBDServer) Stop() {
	s.Signal(syscall.SIGTERM)
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		s.Signal(syscall.SIGKILL)
		s.Wait()
	}
}

// StartQemuNBD serves image with qemu-nbd on a new socket in dir, as export
// "disk". args come before the image (e.g. "-f", "raw", "-e", "4").
func StartQemuNBD(dir, name string, image string, args ...string) (*NBDServer, error) {
	sock := filepath.Join(dir, name+".sock")
	all := append([]string{"--socket=" + sock, "--export-name=disk", "--persistent"}, args...)
	all = append(all, image)
	return startNBD(dir, name, sock, "qemu-nbd", all)
}

// StartQemuNBDTCP serves image with qemu-nbd on 127.0.0.1:port, as export
// "disk": an endpoint every node of a loopback cluster reaches.
func StartQemuNBDTCP(dir, name, image string, port int, args ...string) (*NBDServer, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	all := append([]string{"--bind=127.0.0.1", fmt.Sprintf("--port=%d", port), "--export-name=disk", "--persistent"}, args...)
	all = append(all, image)
	return startNBDOn(dir, name, "tcp", addr, "qemu-nbd", all)
}

// StartNbdkit runs nbdkit with plugin and its arguments on a new socket in
// dir, as export "disk" (nbdkit serves any export name).
func StartNbdkit(dir, name string, plugin ...string) (*NBDServer, error) {
	sock := filepath.Join(dir, name+".sock")
	all := append([]string{"--foreground", "--exit-with-parent", "--unix", sock}, plugin...)
	return startNBD(dir, name, sock, "nbdkit", all)
}

func startNBD(dir, name, sock, bin string, args []string) (*NBDServer, error) {
	return startNBDOn(dir, name, "unix", sock, bin, args)
}

// startNBDOn starts the server and waits until it accepts on network/addr.
func startNBDOn(dir, name, network, addr, bin string, args []string) (*NBDServer, error) {
	if _, err := exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("%s not installed: %w", bin, err)
	}
	p, err := StartProc(filepath.Join(dir, name+".log"), bin, args...)
	if err != nil {
		return nil, err
	}
	s := &NBDServer{Proc: p, Export: "disk"}
	if network == "unix" {
		s.Socket = addr
	} else {
		s.Addr = addr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = WaitFor(ctx, 10*time.Millisecond, func() bool {
		if p.Exited() {
			return true
		}
		c, err := net.Dial(network, addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if err != nil || p.Exited() {
		s.Stop()
		return nil, fmt.Errorf("%s did not come up on %s (see %s.log): %v", bin, addr, filepath.Join(dir, name), err)
	}
	return s, nil
}
