package report

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

var (
	white  = color.RGBA{255, 255, 255, 255}
	black  = color.RGBA{0, 0, 0, 255}
	grid   = color.RGBA{225, 225, 225, 255}
	colors = []color.RGBA{{66, 133, 244, 255}, {52, 168, 83, 255}, {251, 188, 5, 255}, {234, 67, 53, 255}}
)

// Plot draws the latency percentiles of rows as grouped bars, one group per row (scenario
// and connections), one bar per percentile, on a log scale so that p50 and p99.9 are both
// readable.
func Plot(w io.Writer, rows []Row, title string) error {
	if len(rows) == 0 {
		return fmt.Errorf("plot: no rows")
	}
	const (
		left, right, top, bottom = 70, 20, 60, 70
		groupW, barW, gap        = 84, 16, 16
	)
	width := left + right + len(rows)*(groupW+gap)
	height := 480
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)

	lo, hi := math.Inf(1), 0.0
	for _, r := range rows {
		for _, v := range []float64{r.P50, r.P999} {
			if v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if hi == 0 {
		return fmt.Errorf("plot: no latencies")
	}
	// whole decades around the data
	dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dhi == dlo {
		dhi++
	}
	plotH := height - top - bottom
	y := func(v float64) int {
		if v <= 0 {
			return height - bottom
		}
		f := (math.Log10(v) - dlo) / (dhi - dlo)
		return height - bottom - int(f*float64(plotH))
	}
	for d := dlo; d <= dhi; d++ {
		for m := 1; m < 10; m++ {
			v := float64(m) * math.Pow(10, d)
			if d == dhi && m > 1 {
				break
			}
			yy := y(v)
			c := grid
			if m == 1 {
				c = color.RGBA{180, 180, 180, 255}
				text(img, 4, yy+4, fmtUS(v))
			}
			hline(img, left, width-right, yy, c)
		}
	}
	hline(img, left, width-right, height-bottom, black)
	vline(img, left, top, height-bottom, black)
	text(img, left, 20, title)
	for i, name := range []string{"p50", "p90", "p99", "p99.9"} {
		x := left + i*70
		fill(img, x, 30, x+10, 40, colors[i])
		text(img, x+14, 40, name)
	}
	for i, r := range rows {
		x0 := left + gap/2 + i*(groupW+gap)
		for j, v := range []float64{r.P50, r.P90, r.P99, r.P999} {
			x := x0 + 6 + j*(barW+2)
			fill(img, x, y(v), x+barW, height-bottom, colors[j])
		}
		text(img, x0, height-bottom+16, r.Scenario)
		text(img, x0, height-bottom+30, fmt.Sprintf("%d conn", r.Connections))
	}
	text(img, 4, height-12, "latency in microseconds (log scale) at the fixed request rate; lower is better")
	return png.Encode(w, img)
}

// inThousands labels v with unit, or in thousands with kilo from 1000 on.
func inThousands(v float64, unit, kilo string) string {
	if v >= 1000 {
		return fmt.Sprintf("%g%s", v/1000, kilo)
	}
	return fmt.Sprintf("%g%s", v, unit)
}

func fmtUS(v float64) string   { return inThousands(v, "us", "ms") }
func fmtMS(v float64) string   { return inThousands(v, "ms", "s") }
func fmtPods(v float64) string { return inThousands(v, "", "k") }

func text(img *image.RGBA, x, y int, s string) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(black), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func fill(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x < x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y < y1; y++ {
		img.Set(x, y, c)
	}
}
