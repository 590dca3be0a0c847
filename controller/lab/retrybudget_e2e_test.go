package lab

import (
	"fmt"
	"testing"

	"ambit.dev/mesh/wait"
)

// TestLabWaypointIstioRetryBudget: 40 concurrent requests to Service res, whose four pods all
// answer 503, behind `retries: {attempts: 3, retryOn: 5xx}`. Without a budget every request
// is tried four times; with a DestinationRule's `retryBudget` of 10 % (at least 1) the
// retries the budget refuses are not made, the failed answer is returned at once, and
// ambit_waypoint_upstream_overflow_total{reason="retry_budget"} counts them: retries cannot
// multiply an overload.
func TestLabWaypointIstioRetryBudget(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	res := resPodStates(t, st)
	const n = 40
	path := "/status/503"
	burst := func() (attempts int, failed int) {
		t.Helper()
		h0, err := sumHits(res, path)
		if err != nil {
			t.Fatal(err)
		}
		outs := concurrently(n, n, func(int) outcome { return timed(client, "http://"+resVIP+path, nil) })
		for _, o := range outs {
			if o.err != nil || o.code != 503 {
				failed++
			}
		}
		// the last attempts may still be on their way to the pods
		wait.Until(t, settle, "the attempts counted at the pods", func() error {
			h, err := sumHits(res, path)
			if err != nil {
				return err
			}
			if h-h0 < n {
				return fmt.Errorf("%d attempts for %d requests", h-h0, n)
			}
			attempts = h - h0
			return nil
		})
		return attempts, failed
	}
	budgetRefusals := func() float64 {
		v, err := waypointCounter("ambit_waypoint_upstream_overflow_total", `reason="retry_budget"`, `destination_service="res.demo.svc.cluster.local`)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Without a budget: the retry file of TestLabWaypointIstioRetries (attempts 3 on 5xx).
	retry := "testdata/policies/res-istio-retry.yaml"
	if _, err := Apply(e2eOpts.Dir, retry); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "the retries in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"Attempts":3`)
	})
	resReady(t, client)
	free, bad := burst()
	if err := Delete(e2eOpts.Dir, retry); err != nil {
		t.Fatal(err)
	}
	if bad > 0 || free != 4*n {
		t.Fatalf("without a budget: %d attempts for %d requests (%d not answered 503), want %d", free, n, bad, 4*n)
	}

	apply(t, "testdata/policies/res-istio-budget.yaml")
	wait.Until(t, settle, "the retry budget in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"Attempts":3`, `"BudgetPercent":10`, `"BudgetMinRetry":1`)
	})
	resReady(t, client)
	refused0 := budgetRefusals()
	capped, bad := burst()
	var refused float64
	wait.Until(t, settle, "the refused retries counted", func() error {
		if refused = budgetRefusals() - refused0; refused == 0 {
			return fmt.Errorf("ambit_waypoint_upstream_overflow_total{reason=\"retry_budget\"} did not grow")
		}
		return nil
	})
	t.Logf("%d concurrent requests to pods answering 503, 3 retries each: %d attempts without a budget, %d with a 10%% budget (%v retries refused, counted)",
		n, free, capped, refused)
	if bad > 0 {
		t.Errorf("with the budget, %d of %d requests were not answered 503", bad, n)
	}
	// 40 requests in flight: 10 % is 4 retries at a time, far fewer than the 120 without
	if capped > n+n/2 {
		t.Errorf("with a 10%% budget: %d attempts for %d requests, want at most %d", capped, n, n+n/2)
	}
}
