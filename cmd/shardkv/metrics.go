package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsServer serves a Prometheus registry on /metrics: the engine's metrics of
// every replica in the process (labelled replica="N") plus Go runtime and
// process metrics.
type metricsServer struct {
	reg *prometheus.Registry
	srv *http.Server
	ln  net.Listener
}

func startMetrics(addr string) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{reg: reg, ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = m.srv.Serve(ln) }()
	return m, nil
}

// Addr is the address the server listens on.
func (m *metricsServer) Addr() string { return m.ln.Addr().String() }

// register adds a replica's engine metrics, labelled with its ID.
func (m *metricsServer) register(r *replica) error {
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"replica": fmt.Sprint(r.cfg.ID)}, m.reg)
	return wrapped.Register(r.node.Collector())
}

func (m *metricsServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
