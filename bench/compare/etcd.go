package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/netloss"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdCluster is a 3-member etcd cluster of separate processes.
type etcdCluster struct {
	members   []*proc
	endpoints []string // client URLs
	metrics   []string // each member's /metrics URL
	scrape    *http.Client
	clients   []*clientv3.Client
	target    string // the endpoints the clients use: "leader" or "all"
	leaderURL string
}

type etcdOptions struct {
	bin       string
	root      string
	certs     *certFiles // for TLS
	peerTLS   bool
	clientTLS bool
	conns     int    // clients (each its own gRPC connection)
	target    string // "leader" or "all"
	members   int
	loss      *netloss.Table // drops a share of the peer packets (nil: none)
}

func startEtcd(ctx context.Context, ps *procs, o etcdOptions) (*etcdCluster, error) {
	peerScheme, clientScheme := "http", "http"
	if o.peerTLS {
		peerScheme = "https"
	}
	if o.clientTLS {
		clientScheme = "https"
	}
	type member struct{ name, peer, client, http string }
	var ms []member
	var initial []string
	for i := range o.members {
		pa, err := freeAddr()
		if err == nil && o.loss != nil {
			err = o.loss.Add(ctx, pa)
		}
		if err != nil {
			return nil, err
		}
		ca, err := freeAddr()
		if err != nil {
			return nil, err
		}
		ha, err := freeAddr()
		if err != nil {
			return nil, err
		}
		m := member{name: fmt.Sprintf("e%d", i+1), peer: peerScheme + "://" + pa, client: clientScheme + "://" + ca,
			http: clientScheme + "://" + ha}
		ms = append(ms, m)
		initial = append(initial, m.name+"="+m.peer)
	}
	if err := os.MkdirAll(o.root, 0o755); err != nil {
		return nil, err
	}
	c := &etcdCluster{target: o.target}
	for _, m := range ms {
		args := []string{
			"--name", m.name,
			"--data-dir", filepath.Join(o.root, m.name),
			"--listen-peer-urls", m.peer,
			"--initial-advertise-peer-urls", m.peer,
			"--listen-client-urls", m.client,
			"--advertise-client-urls", m.client,
			// HTTP (the gateway, /health, /metrics) on a port of its own, so
			// that the client port serves gRPC alone with the native gRPC
			// server: gRPC muxed with HTTP goes through grpc-go's much slower
			// ServeHTTP once TLS is on (etcd's recommended setting since v3.5.8).
			"--listen-client-http-urls", m.http,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "bench-compare",
			"--log-level", "warn",
		}
		if o.peerTLS {
			args = append(args,
				"--peer-cert-file", o.certs.Cert, "--peer-key-file", o.certs.Key,
				"--peer-trusted-ca-file", o.certs.CA, "--peer-client-cert-auth")
		}
		if o.clientTLS {
			args = append(args, "--cert-file", o.certs.Cert, "--key-file", o.certs.Key)
		}
		p, err := ps.start("etcd "+m.name, filepath.Join(o.root, m.name+".log"), o.bin, args...)
		if err != nil {
			return nil, err
		}
		c.members = append(c.members, p)
		c.endpoints = append(c.endpoints, m.client)
		c.metrics = append(c.metrics, m.http+"/metrics")
	}
	var tlsCfg *tls.Config
	if o.clientTLS {
		tlsCfg = o.certs.clientTLS()
	}
	c.scrape = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 5 * time.Second}
	newClient := func(eps []string) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{
			Endpoints:   eps,
			DialTimeout: 5 * time.Second,
			TLS:         tlsCfg,
			Logger:      zap.NewNop(),
		})
	}
	// Wait for a leader that every member agrees on, and a write through it.
	probe, err := newClient(c.endpoints)
	if err != nil {
		return nil, err
	}
	defer probe.Close()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := c.checkAlive(); err != nil {
			return nil, err
		}
		leader, err := c.findLeader(ctx, probe)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = probe.Put(pctx, "bench-compare/ready", "1")
			cancel()
			if err == nil {
				c.leaderURL = leader
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("etcd never became ready: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	eps := c.endpoints
	if o.target == "leader" {
		eps = []string{c.leaderURL}
	}
	for range max(o.conns, 1) {
		cl, err := newClient(eps)
		if err != nil {
			c.close()
			return nil, err
		}
		c.clients = append(c.clients, cl)
	}
	return c, nil
}

// findLeader returns the client URL of the member that every member reports
// as the leader.
func (c *etcdCluster) findLeader(ctx context.Context, cl *clientv3.Client) (string, error) {
	var leader uint64
	url := ""
	for _, ep := range c.endpoints {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cl.Status(sctx, ep)
		cancel()
		if err != nil {
			return "", err
		}
		if st.Leader == 0 || (leader != 0 && st.Leader != leader) {
			return "", fmt.Errorf("no agreed leader yet")
		}
		leader = st.Leader
		if st.Header.MemberId == st.Leader {
			url = ep
		}
	}
	if url == "" {
		return "", fmt.Errorf("leader %x is not among the endpoints", leader)
	}
	return url, nil
}

func (c *etcdCluster) checkAlive() error {
	for _, p := range c.members {
		if p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(20))
		}
	}
	return nil
}

func (c *etcdCluster) name() string     { return "etcd" }
func (c *etcdCluster) servers() []*proc { return c.members }

func (c *etcdCluster) timings(ctx context.Context) (serverHistograms, error) {
	const sync = "etcd_disk_wal_fsync_duration_seconds"
	hs, err := sumHistograms(ctx, c.scrape, c.metrics, sync)
	return serverHistograms{walSync: hs[sync]}, err
}

func (c *etcdCluster) client(w int) *clientv3.Client { return c.clients[w%len(c.clients)] }

func (c *etcdCluster) put(ctx context.Context, w int, key, value []byte) error {
	_, err := c.client(w).Put(ctx, string(key), string(value))
	return err
}

// get is a linearizable read (etcd's default, serializable=false).
func (c *etcdCluster) get(ctx context.Context, w int, key []byte) error {
	r, err := c.client(w).Get(ctx, string(key))
	if err == nil && len(r.Kvs) != 1 {
		return fmt.Errorf("etcd get %s: %d values", key, len(r.Kvs))
	}
	return err
}

func (c *etcdCluster) close() {
	for _, cl := range c.clients {
		cl.Close()
	}
	c.clients = nil
}
