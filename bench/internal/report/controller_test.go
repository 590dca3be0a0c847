package report

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// controllerLines are three sizes as `make bench-controller` writes them (fields the plots do
// not use included), out of order and with a blank line.
const controllerLines = `{"pods":50000,"services":5000,"clients":100,"full_sync_ms":14975.5,"change_p50_ms":36.027,"change_p99_ms":84.506,"rss_mb":592.8,"sync_controller_cpu_ms":2665.2,"sync_clients_cpu_ms":26867.3,"sync_clients_sys_ms":16873.3,"sync_clients_faults":1244726,"thp":"madvise"}
{"pods":10000,"services":1000,"clients":100,"full_sync_ms":2106.9,"change_p50_ms":18.085,"change_p99_ms":32.321,"rss_mb":145.2,"sync_controller_cpu_ms":516.2,"sync_clients_cpu_ms":3657.4,"sync_clients_sys_ms":1550.2,"sync_clients_faults":225882,"thp":"madvise"}

{"pods":100000,"services":10000,"clients":100,"full_sync_ms":30079.6,"change_p50_ms":57.634,"change_p99_ms":158.219,"rss_mb":1169.7,"sync_controller_cpu_ms":4384.9,"sync_clients_cpu_ms":54699,"sync_clients_sys_ms":32735.4,"sync_clients_faults":2489620,"thp":"madvise"}
`

func TestReadControllerRuns(t *testing.T) {
	runs, err := ReadControllerRuns(strings.NewReader(controllerLines))
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 3 || runs[0].Pods != 10000 || runs[1].Pods != 50000 || runs[2].Pods != 100000 {
		t.Fatalf("runs not in order of size: %+v", runs)
	}
	if r := runs[2]; r.FullSyncMS != 30079.6 || r.ChangeP99MS != 158.219 || r.RSSMB != 1169.7 ||
		r.SyncControllerCPUMS != 4384.9 || r.SyncClientsCPUMS != 54699 || r.Clients != 100 {
		t.Errorf("100,000 pods read as %+v", r)
	}

	one := strings.SplitN(controllerLines, "\n", 2)[0]
	for name, tc := range map[string]struct{ in, want string }{
		"not JSON":       {one + "\nsync done\n", "line 2:"},
		"not an object":  {"[1,2]\n", "line 1:"},
		"a field gone":   {strings.Replace(one, `"rss_mb":592.8,`, "", 1), `no "rss_mb"`},
		"a field's type": {strings.Replace(one, `"full_sync_ms":14975.5`, `"full_sync_ms":"15s"`, 1), "line 1:"},
		"no pods":        {strings.Replace(one, `"pods":50000`, `"pods":0`, 1), "pods 0"},
		"a size twice":   {one + "\n" + one + "\n", "line 2: a second run of 50000 pods"},
		"empty":          {"\n\n", "no runs"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadControllerRuns(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

func TestPlotController(t *testing.T) {
	runs, err := ReadControllerRuns(strings.NewReader(controllerLines))
	if err != nil {
		t.Fatal(err)
	}
	// five series: sync wall, controller CPU, clients' CPU, change p50 and p99
	drawn(t, func(w io.Writer) error { return PlotControllerTime(w, runs, "controller") }, 5, 300)
	// a time of zero has no place on a log scale: that series keeps its other points
	runs[1].ChangeP50MS = 0
	drawn(t, func(w io.Writer) error { return PlotControllerTime(w, runs, "a zero") }, 5, 250)
	drawn(t, func(w io.Writer) error { return PlotControllerRSS(w, runs, "rss") }, 1, 300)

	var b bytes.Buffer
	if PlotControllerTime(&b, nil, "x") == nil || PlotControllerRSS(&b, nil, "x") == nil {
		t.Error("a plot of no runs accepted")
	}
}
