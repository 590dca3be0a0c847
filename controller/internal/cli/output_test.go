package cli

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"ambit.dev/proto/nodeapi"

	"ambit.dev/controller/internal/xds"
	"ambit.dev/controller/lab"
)

// TestJSONKeysCamelCase: every type the CLI prints with -o json or yaml has camelCase keys,
// as the protojson of the mesh resources has; the proxies' snake_case dump fields
// (dump.CertInfo) are printed through certOutput.
func TestJSONKeysCamelCase(t *testing.T) {
	camel := regexp.MustCompile(`^[a-z][a-z0-9]*([A-Z][a-z0-9]*)*$`)
	seen := map[reflect.Type]bool{}
	var check func(path string, typ reflect.Type)
	check = func(path string, typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() == "time" || seen[typ] {
			return
		}
		seen[typ] = true
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Anonymous && name == "" {
				check(path, f.Type)
				continue
			}
			if name == "-" {
				continue
			}
			if name == "" {
				t.Errorf("%s.%s: no json tag", path, f.Name)
			} else if !camel.MatchString(name) {
				t.Errorf("%s.%s: key %q is not camelCase", path, f.Name, name)
			}
			check(path+"."+name, f.Type)
		}
	}
	for _, v := range []any{
		certOutput{},        // ztunnel-config certificates
		nodeapi.PodStatus{}, // ztunnel-config pods
		xds.ProxyStatus{},   // proxy-status
		waypointRow{},       // waypoint list, waypoint status
		lab.Status{},        // lab status
	} {
		typ := reflect.TypeOf(v)
		check(typ.String(), typ)
	}
}
