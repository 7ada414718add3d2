package harness

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/chromedp/chromedp"
)

// ChromiumOptions are the allocator options of a headless Chromium for
// the cluster's console: Chromium at bin with the profile dir, trusting
// exactly the nodes' certificate keys (the cluster CA is not in the
// system's store), resolving no host name (it reaches only the loopback
// addresses it is sent to), and without the sandbox, which Chromium
// refuses to start with as root in a container. Its temporary files go
// under profile too (TMPDIR): killed, Chromium leaves its singleton
// directory (org.chromium.Chromium.*) behind, and only the caller's
// removal of profile takes it away.
func ChromiumOptions(bin, profile string, c *Cluster) ([]chromedp.ExecAllocatorOption, error) {
	var leaves []*x509.Certificate
	for _, n := range c.Nodes {
		if n.Creds == nil {
			return nil, fmt.Errorf("node %s has no credentials", n.Name)
		}
		leaves = append(leaves, n.Creds.Leaf)
	}
	return ChromiumOptionsFor(bin, profile, leaves, "127.0.0.1"), nil
}

// ChromiumOptionsFor is ChromiumOptions for servers with the certificates
// leaves at the addresses addrs (IP literals): no other name resolves.
func ChromiumOptionsFor(bin, profile string, leaves []*x509.Certificate, addrs ...string) []chromedp.ExecAllocatorOption {
	var spki []string
	for _, leaf := range leaves {
		sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		spki = append(spki, base64.StdEncoding.EncodeToString(sum[:]))
	}
	rules := []string{"MAP * ~NOTFOUND"}
	for _, a := range addrs {
		rules = append(rules, "EXCLUDE "+a)
	}
	return append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.Env("TMPDIR="+profile),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(spki, ",")),
		chromedp.Flag("host-resolver-rules", strings.Join(rules, ", ")),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.WindowSize(1400, 900),
	)
}
