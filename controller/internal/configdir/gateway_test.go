package configdir

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const gatewayDoc = `# The waypoint of shop. Keep this comment.
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shop-wp
  namespace: shop
  labels: {ambit.dev/waypoint-for: serviceaccount}
spec:
  gatewayClassName: ambit-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
status:
  conditions: []
---
# Another document: left alone, byte for byte.
apiVersion: v1
kind: ServiceAccount
metadata: {name: shop-wp, namespace: shop}   # same name, other kind
`

// folderWaypointAddr reads the folder the way the controller does and returns the address
// of waypoint shop/shop-wp.
func folderWaypointAddr(t *testing.T, path string) string {
	t.Helper()
	objs, err := source.ParseFile(path, []byte(read(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if gw, ok := o.(*gatewayv1.Gateway); ok {
			wp, _, err := model.ConvertGateway(gw, "cluster.local")
			if err != nil {
				t.Fatal(err)
			}
			a, _ := netip.AddrFromSlice(wp.GetAddress().GetAddress())
			if !a.IsValid() {
				return ""
			}
			return a.String()
		}
	}
	t.Fatalf("%s: no Gateway", path)
	return ""
}

func TestSetGatewayAddress(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "gw.yaml", gatewayDoc)
	if a := folderWaypointAddr(t, p); a != "" {
		t.Fatalf("address %q before any was set", a)
	}
	res, err := SetGatewayAddress(dir, "shop", "shop-wp", netip.MustParseAddr("10.76.1.200"))
	if err != nil || !res.Changed || len(res.Files) != 1 || filepath.Base(res.Files[0]) != "gw.yaml" {
		t.Fatalf("SetGatewayAddress: %+v, %v", res, err)
	}
	if a := folderWaypointAddr(t, p); a != "10.76.1.200" {
		t.Fatalf("the controller reads address %q, want 10.76.1.200", a)
	}
	got := read(t, p)
	for _, keep := range []string{"# The waypoint of shop. Keep this comment.", "conditions: []",
		"# Another document: left alone, byte for byte.\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: shop-wp, namespace: shop}   # same name, other kind\n"} {
		if !strings.Contains(got, keep) {
			t.Fatalf("the edit lost %q:\n%s", keep, got)
		}
	}
	if res, err := SetGatewayAddress(dir, "shop", "shop-wp", netip.MustParseAddr("10.76.1.200")); err != nil || res.Changed {
		t.Fatalf("same address again: %+v, %v; want no change", res, err)
	}
	if read(t, p) != got {
		t.Fatal("an edit that changes nothing rewrote the file")
	}
	if _, err := SetGatewayAddress(dir, "shop", "shop-wp", netip.MustParseAddr("10.76.2.201")); err != nil {
		t.Fatal(err)
	}
	if a := folderWaypointAddr(t, p); a != "10.76.2.201" {
		t.Fatalf("after a second address the controller reads %q", a)
	}
	if strings.Count(read(t, p), "IPAddress") != 1 {
		t.Fatalf("status holds more than one address:\n%s", read(t, p))
	}
}

func TestSetGatewayAddressRefusals(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "gw.yaml", gatewayDoc)
	before := snapshot(t, dir)
	for _, c := range []struct {
		ns, name string
		addr     netip.Addr
		want     string
	}{
		{"shop", "other", netip.MustParseAddr("10.0.0.1"), "defined in no file"},
		{"shop", "shop-wp", netip.Addr{}, "no address"},
		{"Shop!", "shop-wp", netip.MustParseAddr("10.0.0.1"), "namespace name"},
	} {
		if _, err := SetGatewayAddress(dir, c.ns, c.name, c.addr); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SetGatewayAddress(%s/%s, %v): %v, want an error with %q", c.ns, c.name, c.addr, err, c.want)
		}
	}
	write(t, dir, "broken.yaml", "apiVersion: v1\nkind: [\n")
	if _, err := SetGatewayAddress(dir, "shop", "shop-wp", netip.MustParseAddr("10.0.0.1")); err == nil || !strings.Contains(err.Error(), "broken.yaml") {
		t.Errorf("a broken file in the folder: %v, want an error naming it", err)
	}
	if read(t, p) != before[p] {
		t.Fatal("a refused edit changed the Gateway's file")
	}
}
