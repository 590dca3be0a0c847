package app

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestHBONEIdleTimeoutValidated: --hbone-idle-timeout (issue 13) must not be negative; zero
// means hbone's default.
func TestHBONEIdleTimeoutValidated(t *testing.T) {
	base := Config{Node: "n", TrustDomain: "cluster.local", StateDir: "/s", NodeAPI: "/a", LocalConfig: "/l"}
	for _, d := range []time.Duration{0, time.Minute} {
		c := base
		c.HBONEIdleTimeout = d
		if err := c.validate(); err != nil {
			t.Errorf("idle timeout %v: %v", d, err)
		}
	}
	c := base
	c.HBONEIdleTimeout = -time.Second
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "--hbone-idle-timeout") {
		t.Errorf("negative idle timeout: %v, want an error naming --hbone-idle-timeout", err)
	}
}

// TestH3LossThresholdValidated: --h3-loss-threshold is a share between 0 (the shield off,
// which hbone spells negative) and 1.
func TestH3LossThresholdValidated(t *testing.T) {
	base := Config{Node: "n", TrustDomain: "cluster.local", StateDir: "/s", NodeAPI: "/a", LocalConfig: "/l"}
	for v, want := range map[float64]float64{0: -1, 0.005: 0.005, 1: 1} {
		c := base
		c.H3LossThreshold = v
		if err := c.validate(); err != nil {
			t.Errorf("threshold %g: %v", v, err)
		}
		if got := c.h3LossThreshold(); got != want {
			t.Errorf("threshold %g: hbone gets %g, want %g", v, got, want)
		}
	}
	for _, v := range []float64{-0.1, 1.5, math.NaN()} {
		c := base
		c.H3LossThreshold = v
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), "--h3-loss-threshold") {
			t.Errorf("threshold %g: %v, want an error naming --h3-loss-threshold", v, err)
		}
	}
}
