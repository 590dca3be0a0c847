package lab

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Options says where a lab lives and what it runs.
type Options struct {
	// Dir is the state dir (DefaultStateDir when empty): config, tokens, CA, logs, pods.json
	// of each ztunnel and state.json.
	Dir string
	// BinDir holds the controller and ztunnel binaries; Ambitctl is the ambitctl binary
	// that runs the sample applications in the pods. Defaults: the running executable and
	// its directory.
	BinDir   string
	Ambitctl string
	// Invoked is how the user ran ambitctl (os.Args[0] as given, e.g. bin/ambitctl), for the
	// commands Up's hints name: the bare name is often not on the PATH. Default "ambitctl".
	Invoked string
	// Prefix names the host objects (bridge <prefix>br, links <prefix>v<n>, namespaces
	// <prefix>-<namespace>-<pod>); default "ambitlab". Tests use their own so that they
	// never touch a developer's lab.
	Prefix string
	// PortBase places the host-side ports: the controller at PortBase+12 (gRPC) and +14
	// (metrics, debug), node i's ztunnel at PortBase+100*(i+1) (admin), +20 (metrics) and
	// +21 (readiness). Default 15000.
	PortBase int
	// ControllerArgs are more flags for the controller, after the lab's own (e.g.
	// --cert-ttl=30s for short-lived workload certificates).
	ControllerArgs []string
	// Out receives the progress lines; nil discards them.
	Out io.Writer
}

// DefaultPrefix names the host objects of the default lab.
const DefaultPrefix = "ambitlab"

func (o *Options) complete() error {
	if o.Dir == "" {
		o.Dir = DefaultStateDir
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if len(o.Prefix) > 9 {
		return fmt.Errorf("lab prefix %q: at most 9 characters (link names are limited to 15)", o.Prefix)
	}
	if o.PortBase == 0 {
		o.PortBase = 15000
	}
	if o.Ambitctl == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Ambitctl = exe
	}
	if o.BinDir == "" {
		o.BinDir = filepath.Dir(o.Ambitctl)
	}
	if o.Invoked == "" {
		o.Invoked = "ambitctl"
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return nil
}

func (o *Options) printf(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }

func (o *Options) path(elem ...string) string {
	return filepath.Join(append([]string{o.Dir}, elem...)...)
}

// grpcAddr is on the bridge: waypoints run inside pods and must reach the controller too.
func (o *Options) grpcAddr(t *Topology) string {
	return fmt.Sprintf("%s:%d", t.Gateway().Addr(), o.PortBase+12)
}
func (o *Options) debugAddr() string { return fmt.Sprintf("127.0.0.1:%d", o.PortBase+14) }
func (o *Options) nodeAddr(i, off int) string {
	return fmt.Sprintf("127.0.0.1:%d", o.PortBase+100*(i+1)+off)
}

// podUID is stable across `lab up` runs, so a ztunnel's records stay valid.
func podUID(lab string, p Pod) string {
	h := sha256.Sum256([]byte(lab + "/" + p.Namespace + "/" + p.Name))
	h[6] = h[6]&0x0f | 0x50 // version 5 layout
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
