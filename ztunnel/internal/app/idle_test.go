package app

import (
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
