package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nodedb/nodedb-cluster/internal/server"
)

// Config configures a node's API endpoint.
type Config struct {
	// Addr is the listen address, HOST:PORT.
	Addr string
	// TLS, when set, serves HTTPS (HTTP/2 included, for gRPC); otherwise
	// plain HTTP with HTTP/2 cleartext for gRPC clients that use it.
	TLS *tls.Config
	// Metrics is the node's metrics registry, served at /metrics.
	Metrics prometheus.Gatherer
	Logger  *slog.Logger
}

// Endpoint is a running API endpoint.
type Endpoint struct {
	stop func() // the handler's
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Handler returns the API's routes over svc: REST, POST /v1/multi, the
// Connect service, metrics and profiling. Call stop once the handler
// serves no more: it ends the goroutines that run carried requests.
func Handler(svc Service, metrics prometheus.Gatherer) (h http.Handler, stop func()) {
	mux := http.NewServeMux()
	rh := &rest{svc: svc}
	rh.register(mux)
	mux.Handle("/v1/admin/", svc.AdminHandler())
	w := newWorkers()
	mux.Handle("POST /v1/multi", newMulti(mux, rh, svc.Limits().MaxValueSize, w))
	path, h := ConnectHandler(svc)
	mux.Handle(path, h)
	if metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	server.HandleEmptyKey(mux)
	server.HandleUnrouted(mux)
	return mux, w.stop
}

// Listen starts serving svc on cfg.Addr.
func Listen(cfg Config, svc Service) (*Endpoint, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("api: listen %s: %w", cfg.Addr, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if cfg.TLS != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	h, stop := Handler(svc, cfg.Metrics)
	e := &Endpoint{
		stop: stop,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    64 << 10,
			Protocols:         &protocols,
			TLSConfig:         cfg.TLS,
			ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(e.done)
		var err error
		if cfg.TLS != nil {
			err = e.srv.ServeTLS(ln, "", "")
		} else {
			err = e.srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("api server", "err", err)
		}
	}()
	return e, nil
}

// Addr is the address the endpoint listens on.
func (e *Endpoint) Addr() net.Addr { return e.ln.Addr() }

// Close stops the endpoint, letting requests in progress finish for up to
// five seconds.
func (e *Endpoint) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	<-e.done
	e.stop()
	return err
}
