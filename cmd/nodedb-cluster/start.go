package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

func newStartCommand() *cobra.Command {
	var (
		cfg          server.Config
		logLevel     string
		tokenTTL     time.Duration
		clientExpiry time.Duration
		apiCert      string
		apiKey       string
		cacheMiB     int
		memTableMiB  int
	)
	cfg.Settings = server.DefaultSettings()
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Run one node of a cluster",
		Long: `Run one node in this process, with its data in --dir and its peer listener
on --listen: QUIC (UDP), or TCP with --transport tcp for networks that block
UDP; mutual TLS 1.3 with every peer either way. Every node of a cluster
uses the same transport, and a node keeps the one it was created with.

A node comes to exist in one of two explicit ways:

  --bootstrap                 create a new cluster: its CA, its ID, the
                              metadata group and the data groups, with every
                              vShard assigned; prints a first join token
  --join HOST:PORT --token T  join an existing cluster through any of its
                              nodes, with a token from 'token create'; the
                              token names the cluster's CA, which is checked
                              before anything secret is sent

A node never bootstraps on its own. Once a dir holds a node, start it again
with --dir (and its listen flags) alone: its identity is in the dir, and
--bootstrap, --join and --token are ignored.

Operators reach a running node through its admin socket, DIR/admin.sock
(mode 0600): 'nodedb-cluster status --dir DIR', 'token create --dir DIR'.`,
		Example: `  nodedb-cluster start --dir n1 --listen 127.0.0.1:7401 --bootstrap
  nodedb-cluster token create --dir n1
  nodedb-cluster start --dir n2 --listen 127.0.0.1:7402 --join 127.0.0.1:7401 --token <token>`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if err := failpoint.Init(); err != nil {
				return err
			}
			addSyncProcessors(1, log)
			raiseGCPercent(log)
			cfg.Logger = log
			cfg.ClientIdleExpiry = clientIdleExpiry(clientExpiry)
			if cfg.CacheBytes, cfg.MemTableBytes, err = storageSizes(cacheMiB, memTableMiB); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := server.Start(ctx, cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			stopAPI := func() error { return nil }
			fmt.Fprintf(out, "node %d of cluster %s listening on %s (%s, mutual TLS); admin socket %s\n",
				s.ID(), s.ClusterID(), s.Addr(), transportName(s.Transport()), server.AdminSocket(cfg.Dir))
			if a := s.APIAddr(); a != "" {
				ep, err := api.ServeNode(s, a, apiCert, apiKey, log.With("component", "api"))
				if err != nil {
					s.Stop()
					return err
				}
				defer ep.Close() // after a failure; normally closed below, before the node
				stopAPI = ep.Close
				scheme := "https"
				if api.IsLoopback(a) && apiCert == "" {
					scheme = "http"
				}
				fmt.Fprintf(out, "client API on %s://%s\n", scheme, ep.Addr())
			}
			if s.Created() && tokenTTL > 0 {
				if err := printFirstToken(ctx, s, tokenTTL, out, log); err != nil {
					log.Warn("first join token", "err", err)
				}
			}
			werr := s.Wait(ctx)
			stopAPI()
			if err := s.Stop(); err != nil {
				log.Error("stop", "err", err)
			}
			return werr
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", "", "data dir (required)")
	f.StringVar(&cfg.Listen, "listen", "", "peer listen address HOST:PORT, UDP for QUIC, TCP with --transport tcp (required to create a node; later the stored one)")
	f.StringVar(&cfg.Transport, "transport", "", "peer transport of a new node: quic (default) or tcp (TCP with the same mutual TLS, where UDP is blocked); every node of a cluster uses the same, and a node keeps its own")
	f.StringVar(&cfg.Advertise, "advertise", "", "address other nodes dial (default --listen)")
	f.StringVar(&cfg.API, "api", "", "client API address HOST:PORT (REST and gRPC); TLS unless it is a loopback address")
	f.StringVar(&apiCert, "api-cert", "", "TLS certificate file for the client API (default: the node's certificate)")
	f.StringVar(&apiKey, "api-key", "", "TLS key file for --api-cert")
	f.IntVar(&cfg.MaxKeyBytes, "max-key-bytes", 4<<10, "largest key the API accepts")
	f.IntVar(&cfg.MaxValueBytes, "max-value-bytes", 1<<20, "largest value the API accepts")
	f.StringVar(&cfg.Zone, "zone", "", "failure domain label; replicas of a group go to distinct zones")
	f.BoolVar(&cfg.Bootstrap, "bootstrap", false, "create a new cluster in an empty --dir")
	f.StringVar(&cfg.Join, "join", "", "join the cluster of the node at HOST:PORT (with --token)")
	f.StringVar(&cfg.Token, "token", "", "join token from 'nodedb-cluster token create'")
	f.DurationVar(&cfg.JoinTimeout, "join-timeout", 2*time.Minute, "give up joining after this long")
	f.IntVar(&cfg.Settings.Groups, "groups", cfg.Settings.Groups, "data groups created at bootstrap")
	f.IntVar(&cfg.Settings.VShards, "vshards", cfg.Settings.VShards, "vShards, a power of two from 16 to 16384 (bootstrap only)")
	f.IntVar(&cfg.Settings.RF, "rf", cfg.Settings.RF, "voters per data group (bootstrap only)")
	f.DurationVar(&tokenTTL, "first-token-ttl", time.Hour, "with --bootstrap, print a join token valid this long (0: none)")
	f.DurationVar(&cfg.TickInterval, "tick", 100*time.Millisecond, "Raft tick interval")
	f.BoolVar(&cfg.ReadLease, "read-lease", false, "serve linearizable reads from the leader's lease, without a quorum round per batch of reads (assumes node clocks run at rates within 10% of each other; docs/architecture.md)")
	f.BoolVar(&cfg.NoQuiesce, "no-quiesce", false, "keep idle groups heartbeating instead of stopping their Raft clocks (quiescence; needed while older nodes that do not quiesce are in the cluster; docs/architecture.md)")
	f.DurationVar(&clientExpiry, "client-idle-expiry", time.Hour, "drop a client's exactly-once records in a vShard this long after its last write there (a write retried later applies again; the Go client retries for at most 10 minutes); 0 keeps them forever")
	f.DurationVar(&cfg.MoveAbortTimeout, "move-abort-timeout", time.Hour, "a replica move not past its point of no return this long after it started is aborted")
	f.DurationVar(&cfg.DiskStallStepDown, "disk-stall-step-down", 0, "hand the groups this node leads to other replicas when one of its Raft log writes takes this long (0: two election timeouts, at least 2s; negative: never)")
	f.DurationVar(&cfg.NodeGoneAfter, "node-gone-after", 5*time.Minute, "a replica move's target that has not answered the metadata leader this long is gone, and the move is aborted")
	f.IntVar(&cacheMiB, "cache-mib", 64, "Pebble block cache in MiB (reads of data not in a memtable or the node's value caches)")
	f.IntVar(&memTableMiB, "memtable-mib", 32, "size of one Pebble memtable in MiB (up to three are in memory while they are flushed); smaller ones cost less CPU per write and flush more often")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	cmd.MarkFlagRequired("dir")
	return cmd
}

// printFirstToken prints a join token after a bootstrap, alone on its line.
func printFirstToken(ctx context.Context, s *server.Server, ttl time.Duration, out interface{ Write([]byte) (int, error) }, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		tok, exp, err := s.CreateToken(ctx, ttl)
		if err == nil {
			fmt.Fprintf(out, "join token (single use, expires %s):\n%s\n", exp.UTC().Format(time.RFC3339), tok)
			return nil
		}
		log.Debug("first join token", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newLogger(level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// clientIdleExpiry maps --client-idle-expiry to server.Config's field, whose
// zero means the default: the flag's 0 (or less) means never.
func clientIdleExpiry(flag time.Duration) time.Duration {
	if flag <= 0 {
		return -1
	}
	return flag
}

// storageSizes checks --cache-mib and --memtable-mib and returns them in
// bytes. Pebble refuses memtables of 4 GiB or more; a memtable under 1 MiB
// would flush at every few hundred writes.
func storageSizes(cacheMiB, memTableMiB int) (int64, uint64, error) {
	const maxMemTableMiB = 1 << 10
	if cacheMiB < 1 || cacheMiB > 1<<20 {
		return 0, 0, fmt.Errorf("--cache-mib %d: want 1 to %d", cacheMiB, 1<<20)
	}
	if memTableMiB < 1 || memTableMiB > maxMemTableMiB {
		return 0, 0, fmt.Errorf("--memtable-mib %d: want 1 to %d", memTableMiB, maxMemTableMiB)
	}
	return int64(cacheMiB) << 20, uint64(memTableMiB) << 20, nil
}

// transportName is how the CLI names a peer transport.
func transportName(t string) string {
	if t == server.TransportTCP {
		return "TCP"
	}
	return "QUIC"
}
