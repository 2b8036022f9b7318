package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/devcluster"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

func newDevCommand() *cobra.Command {
	var (
		shape    devcluster.Shape
		dir      string
		logLevel string
		once     bool
		opts     devcluster.Options
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local N-node cluster in one process",
		Long: `Run a local cluster of --nodes nodes in this process, each with its own
data dir under --dir, its own peer listener (node i on 127.0.0.1:(7400+i),
QUIC, or TCP with --transport tcp; mutual TLS between all of them) and its
client API on 127.0.0.1:(8400+i):
plain HTTP on loopback, serving the REST API under /v1/, the KV service over
Connect and gRPC (h2c), /metrics and /debug/pprof. --port-base P puts node i
on P+i and its API on P+1000+i; --port-base 0 picks free ports for both. The
ports are chosen at the first run and kept by later runs.

The first run takes the operator's path: node 1 bootstraps the cluster (its
CA, metadata group and data groups), every other node joins it with a join
token, and the groups are up-replicated to RF as nodes join. The API
addresses are written one per line to DIR/endpoints (for --endpoints of the
client commands and bench). Once the cluster has passed its self-check the
same addresses are written to DIR/ready (not with --once), which is removed
again when dev stops or starts: scripts wait for that file. Running again
on the same --dir restarts every node from its data. Ctrl-C stops it
cleanly.

Each node also has an admin socket, DIR/nodeI/admin.sock.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			shape.RF = min(3, shape.Nodes)
			raiseGCPercent(slog.Default())
			return runDev(cmd.Context(), cmd.OutOrStdout(), dir, shape, opts, cmd.Flags().Changed, logLevel, once)
		},
	}
	cmd.Flags().IntVar(&shape.Nodes, "nodes", 3, "number of nodes")
	cmd.Flags().IntVar(&shape.Groups, "groups", 16, "number of data groups (first run only)")
	cmd.Flags().IntVar(&shape.VShards, "vshards", 1024, "number of vShards, a power of two from 16 to 16384 (first run only)")
	cmd.Flags().StringVar(&shape.Transport, "transport", "", "peer transport: quic (default) or tcp (first run only)")
	cmd.Flags().StringVar(&dir, "dir", ".nodedb-dev", "parent of the nodes' data dirs")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	cmd.Flags().BoolVar(&once, "once", false, "start, self-check, print the status and exit")
	cmd.Flags().BoolVar(&opts.ReadLease, "read-lease", false, "serve linearizable reads from leader leases (see start --read-lease)")
	cmd.Flags().BoolVar(&opts.NoQuiesce, "no-quiesce", false, "keep idle groups heartbeating (see start --no-quiesce)")
	cmd.Flags().IntVar(&opts.PortBase, "port-base", devcluster.DefaultPortBase, "node i listens on 127.0.0.1:(port-base+i), its API on (port-base+1000+i); 0 picks free ports (first run only)")
	return cmd
}

func runDev(ctx context.Context, out io.Writer, dir string, shape devcluster.Shape, opts devcluster.Options, changed func(string) bool, logLevel string, once bool) error {
	log, err := newLogger(logLevel)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// A ready file left by a run that did not stop cleanly must not make
	// this one look ready before it is.
	readyFile := filepath.Join(dir, devReadyFile)
	if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", readyFile, err)
	}
	c, err := devcluster.StartWith(ctx, dir, shape, opts, log)
	if err != nil {
		return err
	}
	// One processor per node it actually runs: a restart runs the stored
	// shape's nodes, whatever --nodes says.
	addSyncProcessors(c.Shape.Nodes, log)
	defer func() {
		if err := c.Stop(); err != nil {
			log.Error("stop", "err", err)
		}
	}()
	if c.Restarted {
		for flag, v := range map[string][2]int{
			"nodes": {shape.Nodes, c.Shape.Nodes}, "groups": {shape.Groups, c.Shape.Groups}, "vshards": {shape.VShards, c.Shape.VShards},
		} {
			if changed(flag) && v[0] != v[1] {
				fmt.Fprintf(out, "warning: --%s=%d ignored: %s already holds a cluster with %s=%d\n", flag, v[0], dir, flag, v[1])
			}
		}
	}
	verb := "bootstrapped"
	if c.Restarted {
		verb = "restarted"
	}
	if c.Restarted && changed("transport") && cmp.Or(shape.Transport, server.TransportQUIC) != cmp.Or(c.Shape.Transport, server.TransportQUIC) {
		fmt.Fprintf(out, "warning: --transport=%s ignored: %s already holds a cluster over %s\n", shape.Transport, dir, cmp.Or(c.Shape.Transport, server.TransportQUIC))
	}
	tr := transportName(c.Shape.Transport)
	fmt.Fprintf(out, "nodedb-cluster dev: %s %d nodes, %d groups, %d vShards, RF %d over %s in %s\n",
		verb, c.Shape.Nodes, c.Shape.Groups, c.Shape.VShards, c.Shape.RF, tr, dir)

	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Ctrl-C while the groups are still being replicated is a normal stop,
	// not a failure: the nodes stop cleanly and the next run resumes.
	interrupted := func() bool {
		if ctx.Err() == nil {
			return false
		}
		fmt.Fprintln(out, "interrupted before the cluster was ready; stopping")
		return true
	}
	if err := c.WaitReady(readyCtx); err != nil {
		if interrupted() {
			return nil
		}
		return err
	}
	if err := c.SelfCheck(readyCtx); err != nil {
		if interrupted() {
			return nil
		}
		return fmt.Errorf("self-check: %w", err)
	}
	fmt.Fprintf(out, "self-check: a write forwarded over %s to its group leader read back linearizably through every node\n", tr)
	st, err := c.Status()
	if err != nil {
		return err
	}
	printClusterStatus(out, st)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nNODE\tAPI (HTTP, gRPC)\t%s (mutual TLS)\tADMIN SOCKET\n", tr)
	for i, e := range c.Endpoints {
		fmt.Fprintf(tw, "n%d\thttp://%s\t%s\t%s\n", i+1, c.APIs[i], e, c.AdminSockets()[i])
	}
	tw.Flush()
	fmt.Fprintf(out, "API endpoints written to %s. Try:\n  curl -X PUT --data-binary world http://%s/v1/kv/hello\n  curl http://%s/v1/kv/hello\n",
		filepath.Join(dir, "endpoints"), c.APIs[0], c.APIs[len(c.APIs)-1])
	if once {
		return nil
	}
	// Through a rename, so that a reader sees the whole file or none.
	tmp := readyFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(c.APIs, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, readyFile); err != nil {
		return fmt.Errorf("write %s: %w", readyFile, err)
	}
	defer os.Remove(readyFile) // before the nodes stop (deferred earlier)
	fmt.Fprintln(out, "Running; press Ctrl-C to stop.")
	<-ctx.Done()
	fmt.Fprintln(out, "stopping")
	return nil
}

// devReadyFile, in dev's --dir, exists while the cluster is up and has
// passed its self-check; it lists the API addresses like DIR/endpoints.
const devReadyFile = "ready"
