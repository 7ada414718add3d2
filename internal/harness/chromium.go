package harness

import (
	"crypto/sha256"
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
	var spki []string
	for _, n := range c.Nodes {
		if n.Creds == nil {
			return nil, fmt.Errorf("node %s has no credentials", n.Name)
		}
		sum := sha256.Sum256(n.Creds.Leaf.RawSubjectPublicKeyInfo)
		spki = append(spki, base64.StdEncoding.EncodeToString(sum[:]))
	}
	return append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.Env("TMPDIR="+profile),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(spki, ",")),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.WindowSize(1400, 900),
	), nil
}
