// Command kv shows the Go client: put, get, compare-and-set, scan and
// delete against a running cluster.
//
//	go run ./cmd/nodedb-cluster dev     # three nodes, APIs on 127.0.0.1:8401-8403
//	go run ./examples/kv
//
// For a cluster whose API is served over TLS, pass --ca with the cluster
// CA's certificate (ca.crt from any node's DIR/tls).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/client"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:8401,127.0.0.1:8402,127.0.0.1:8403", "comma-separated API addresses (host:port) of any nodes")
	caFile := flag.String("ca", "", "the cluster CA's certificate (PEM) for a TLS API; empty: plain HTTP")
	timeout := flag.Duration("timeout", 30*time.Second, "bound of the whole example")
	flag.Parse()
	log.SetFlags(0)

	cfg := client.Config{Endpoints: strings.Split(*endpoints, ",")}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			log.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			log.Fatalf("%s: no certificate", *caFile)
		}
		cfg.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, cfg); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, cfg client.Config) error {
	c, err := client.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()

	// Put and get.
	key := []byte("example/greeting")
	w, err := c.Put(ctx, key, []byte("hello"))
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	fmt.Printf("put %s: version %d (vShard %d)\n", key, w.Version, w.VShard)
	g, err := c.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	fmt.Printf("get %s = %q (version %d)\n", key, g.Value, g.Version)

	// Compare-and-set: write only if nobody else wrote since our read.
	w, err = c.Put(ctx, key, []byte("hello again"), client.WithIfVersion(g.Version))
	if err != nil {
		return fmt.Errorf("compare-and-set: %w", err)
	}
	fmt.Printf("compare-and-set at version %d: now version %d\n", g.Version, w.Version)
	// The same condition again no longer holds: a conflict, with the
	// current version in its hint.
	_, err = c.Put(ctx, key, []byte("lost update"), client.WithIfVersion(g.Version))
	switch cur, ok := client.CurrentVersion(err); {
	case errors.Is(err, client.ErrConflict) && ok:
		fmt.Printf("compare-and-set at version %d again: conflict, the current version is %d\n", g.Version, cur)
	case err == nil:
		return errors.New("a compare-and-set with a stale version succeeded")
	default:
		return fmt.Errorf("compare-and-set: %w", err)
	}

	// A few keys, then a scan over every vShard, two keys a page.
	for i := range 5 {
		k := fmt.Sprintf("example/item/%d", i)
		if _, err := c.Put(ctx, []byte(k), []byte(fmt.Sprintf("item %d", i))); err != nil {
			return fmt.Errorf("put %s: %w", k, err)
		}
	}
	n := 0
	for it, err := range c.Scan(ctx, []byte("example/"), 2) {
		if err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		fmt.Printf("scan: %s = %q (version %d, vShard %d)\n", it.Key, it.Value, it.Version, it.VShard)
		n++
	}
	fmt.Printf("scan: %d keys\n", n)

	// A read that any replica may serve, at most 2s stale.
	if g, err := c.Get(ctx, key, client.WithStale(2*time.Second)); err == nil {
		fmt.Printf("stale get %s = %q (version %d)\n", key, g.Value, g.Version)
	} else {
		return fmt.Errorf("stale get: %w", err)
	}

	// Delete; a second delete finds nothing.
	if _, err := c.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if _, err := c.Get(ctx, key); errors.Is(err, client.ErrNotFound) {
		fmt.Printf("delete %s: gone\n", key)
	} else {
		return fmt.Errorf("get after delete: %v", err)
	}
	return nil
}
