package report

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
)

// palette colours the lines of a chart, one per series; it repeats past its end.
var palette = []color.RGBA{
	{66, 133, 244, 255}, {234, 67, 53, 255}, {52, 168, 83, 255}, {251, 140, 0, 255},
	{142, 36, 170, 255}, {0, 151, 167, 255}, {121, 85, 72, 255}, {96, 125, 139, 255},
	{233, 30, 99, 255}, {124, 179, 66, 255},
}

// limitColor draws a chart's reference line (the capacity limit).
var limitColor = color.RGBA{200, 0, 0, 255}

// series is one line of a chart.
type series struct {
	name string
	pts  []point
}

// point is one datum; an open point is drawn hollow (a step that did not hold).
type point struct {
	x, y float64
	open bool
}

// axis maps data to pixels, on a log10 or a linear scale.
type axis struct {
	log bool
	// lo and hi are the ends of the axis in data units.
	lo, hi float64
	// ticks are the values labelled, with format.
	ticks  []float64
	format func(float64) string
}

func (a axis) frac(v float64) float64 {
	if a.log {
		if v <= 0 {
			return 0
		}
		return (math.Log10(v) - math.Log10(a.lo)) / (math.Log10(a.hi) - math.Log10(a.lo))
	}
	return (v - a.lo) / (a.hi - a.lo)
}

// chart is a line chart: every series against shared axes, a legend on the right.
type chart struct {
	title, caption string
	x, y           axis
	lines          []series
	// limit, if not 0, is a horizontal reference line at that y, labelled limitLabel.
	limit      float64
	limitLabel string
}

// logAxis spans whole decades around lo..hi (both > 0), labelled at each decade, or at 1,
// 2 and 5 of each when they are few.
func logAxis(lo, hi float64, format func(float64) string) axis {
	dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dhi == dlo {
		dhi++
	}
	a := axis{log: true, lo: math.Pow(10, dlo), hi: math.Pow(10, dhi), format: format}
	for d := dlo; d <= dhi; d++ {
		for _, m := range []float64{1, 2, 5} {
			if (m == 1 || dhi-dlo <= 3) && (d < dhi || m == 1) {
				a.ticks = append(a.ticks, m*math.Pow(10, d))
			}
		}
	}
	return a
}

// linearAxis starts at 0 and ends at a round number at or above hi, with five ticks.
func linearAxis(hi float64, format func(float64) string) axis {
	if hi <= 0 {
		hi = 1
	}
	step := math.Pow(10, math.Floor(math.Log10(hi/5)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if hi/(m*step) <= 5 {
			step *= m
			break
		}
	}
	a := axis{lo: 0, hi: math.Ceil(hi/step) * step, format: format}
	for v := 0.0; v <= a.hi+step/2; v += step {
		a.ticks = append(a.ticks, v)
	}
	return a
}

// draw renders c as a PNG.
func (c chart) draw(w io.Writer) error {
	const (
		width, height            = 900, 500
		left, right, top, bottom = 80, 200, 50, 60
	)
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)
	plotW, plotH := width-left-right, height-top-bottom
	px := func(v float64) int { return left + int(math.Round(c.x.frac(v)*float64(plotW))) }
	py := func(v float64) int { return height - bottom - int(math.Round(c.y.frac(v)*float64(plotH))) }

	for _, t := range c.y.ticks {
		hline(img, left, width-right, py(t), grid)
		s := c.y.format(t)
		text(img, left-6-7*len(s), py(t)+4, s)
	}
	for _, t := range c.x.ticks {
		vline(img, px(t), top, height-bottom, grid)
		s := c.x.format(t)
		text(img, px(t)-7*len(s)/2, height-bottom+16, s)
	}
	hline(img, left, width-right, height-bottom, black)
	vline(img, left, top, height-bottom, black)
	if c.limit > 0 {
		y := py(c.limit)
		for x := left; x < width-right; x += 8 {
			hline(img, x, min(x+5, width-right), y, limitColor)
		}
		text(img, width-right-7*len(c.limitLabel), y-4, c.limitLabel)
	}
	text(img, left, 24, c.title)
	text(img, 8, height-12, c.caption)

	for i, s := range c.lines {
		col := palette[i%len(palette)]
		for j := 1; j < len(s.pts); j++ {
			a, b := s.pts[j-1], s.pts[j]
			line(img, px(a.x), py(a.y), px(b.x), py(b.y), col)
		}
		for _, p := range s.pts {
			marker(img, px(p.x), py(p.y), col, p.open)
		}
		ly := top + 10 + i*18
		fill(img, width-right+12, ly-8, width-right+26, ly+2, col)
		text(img, width-right+32, ly+2, s.name)
	}
	return png.Encode(w, img)
}

// line draws a two-pixel-thick line from (x0, y0) to (x1, y1) (Bresenham's).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		img.Set(x0, y0, c)
		img.Set(x0+1, y0, c)
		img.Set(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			x0 += sx
		} else {
			e += dx
			y0 += sy
		}
	}
}

// marker draws a 7-pixel square at (x, y): filled, or an outline around white.
func marker(img *image.RGBA, x, y int, c color.Color, open bool) {
	fill(img, x-3, y-3, x+4, y+4, c)
	if open {
		fill(img, x-1, y-1, x+2, y+2, white)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}

// PlotCapacity draws every scenario's capacity sweep: p99 against the offered rate, both on
// log scales, one line per scenario, the 5 ms limit dashed; a step that did not hold is a
// hollow square. Of a rate tried again, the last try is drawn (Decisive).
func PlotCapacity(w io.Writer, steps []Step, title string) error {
	var lines []series
	var rates []float64
	lo, hi := math.Inf(1), 0.0
	for _, s := range Decisive(steps) {
		if s.P99 <= 0 || s.OfferedQPS <= 0 {
			continue
		}
		var i int
		lines, i = seriesNamed(lines, s.Scenario)
		lines[i].pts = append(lines[i].pts, point{x: s.OfferedQPS, y: s.P99, open: !s.Held})
		if !slices.Contains(rates, s.OfferedQPS) {
			rates = append(rates, s.OfferedQPS)
		}
		lo, hi = math.Min(lo, s.P99), math.Max(hi, s.P99)
	}
	if len(lines) == 0 {
		return fmt.Errorf("capacity plot: no steps")
	}
	x := logTicks(rates, 1.3)
	c := chart{
		title:   title,
		caption: "p99 latency (log scale) against the offered rate in req/s (log scale); hollow: the step that ended the sweep",
		x:       x, y: logAxis(math.Min(lo, CapacityP99US), math.Max(hi, CapacityP99US), fmtUS),
		lines: lines, limit: CapacityP99US, limitLabel: "p99 limit 5ms",
	}
	return c.draw(w)
}

// PlotIdle draws the idle-tunnel sweep: each ztunnel's resident set against the tunnels
// held, on a log scale of tunnels, a line per scenario and ztunnel.
func PlotIdle(w io.Writer, rows []IdleRow, title string) error {
	var lines []series
	var counts []float64
	var hi float64
	for _, r := range rows {
		if r.Tunnels <= 0 {
			continue
		}
		for _, side := range []struct {
			name string
			kb   int64
		}{{"client", r.ClientRSSKB}, {"server", r.ServerRSSKB}} {
			name := r.Scenario + " " + side.name
			var i int
			lines, i = seriesNamed(lines, name)
			mb := float64(side.kb) / 1024
			lines[i].pts = append(lines[i].pts, point{x: float64(r.Tunnels), y: mb, open: r.Errors > 0})
			hi = max(hi, mb)
		}
		if !slices.Contains(counts, float64(r.Tunnels)) {
			counts = append(counts, float64(r.Tunnels))
		}
	}
	if len(lines) == 0 {
		return fmt.Errorf("idle plot: no rows")
	}
	x := logTicks(counts, 1.5)
	c := chart{
		title:   title,
		caption: "ztunnel resident set in MB against idle tunnels held (log scale); hollow: a level where tunnels failed to open",
		x:       x, y: linearAxis(hi*1.1, func(v float64) string { return fmt.Sprintf("%gMB", v) }),
		lines: lines,
	}
	return c.draw(w)
}

// Drawing is a plot to write: its file's name and what draws it.
type Drawing struct {
	File string
	Draw func(io.Writer) error
}

// WriteDrawings draws each drawing into its file in dir, in turn, and returns the paths
// written. A drawing that fails leaves its file as it was and ends the writing.
func WriteDrawings(dir string, ds ...Drawing) ([]string, error) {
	var files []string
	for _, d := range ds {
		var png bytes.Buffer
		if err := d.Draw(&png); err != nil {
			return files, err
		}
		file := filepath.Join(dir, d.File)
		if err := os.WriteFile(file, png.Bytes(), 0o644); err != nil {
			return files, err
		}
		files = append(files, file)
	}
	return files, nil
}

// seriesNamed returns lines with a series called name (appended if there was none) and its
// index.
func seriesNamed(lines []series, name string) ([]series, int) {
	if i := slices.IndexFunc(lines, func(l series) bool { return l.name == name }); i >= 0 {
		return lines, i
	}
	return append(lines, series{name: name}), len(lines)
}

// logTicks is a log-scale axis with a tick at each of ticks (sorted in place), padded by the
// factor pad on both sides.
func logTicks(ticks []float64, pad float64) axis {
	slices.Sort(ticks)
	return axis{log: true, lo: ticks[0] / pad, hi: ticks[len(ticks)-1] * pad, ticks: ticks,
		format: func(v float64) string { return fmt.Sprintf("%g", v) }}
}
