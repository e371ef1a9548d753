package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-ci/kiln/server/store"
)

type metrics struct {
	requests  *prometheus.CounterVec
	created   *prometheus.CounterVec
	completed *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, st *store.Store) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_http_requests_total", Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		created: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_work_requests_created_total", Help: "Work requests created, by task.",
		}, []string{"task"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_work_requests_completed_total", Help: "Work requests completed, by task and result.",
		}, []string{"task", "result"}),
	}
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kiln_work_requests_pending", Help: "Work requests in status pending (assigned or not).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := st.CountWorkRequests(ctx, "pending")
		if err != nil {
			return -1
		}
		return float64(n)
	})
	reg.MustRegister(m.requests, m.created, m.completed, pending)
	return m
}
