package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

func newStartCommand() *cobra.Command {
	var (
		cfg      server.Config
		nodeID   uint64
		peers    string
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Run one node of a cluster",
		Long: `Run one node in this process, with its data in --dir and its QUIC listener
on --listen (mutual TLS 1.3 with every peer).

Until the metadata group and secure join arrive, membership is static, like
etcd's --initial-cluster: start every node with the same --peers list (node
IDs 1..N) and the same --groups/--vshards/--rf, and a distinct --node-id. The
first start creates the node; later starts need only --dir (flags given again
may update addresses, never the node's identity or the layout). Each node's
certificate is issued at first start from the CA in --ca-dir (create one with
'nodedb-cluster certs ca'), or provisioned beforehand in DIR/tls with
'nodedb-cluster certs node'.

Operators reach a running node through its admin socket, DIR/admin.sock
(mode 0600).`,
		Example: `  nodedb-cluster certs ca --dir ca
  nodedb-cluster start --dir n1 --node-id 1 --ca-dir ca \
    --peers 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.NodeID = ids.NodeID(nodeID)
			if peers != "" {
				if cfg.Peers, err = server.ParsePeers(peers); err != nil {
					return fmt.Errorf("--peers: %w", err)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := server.Start(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %d listening on %s (QUIC, mutual TLS); admin socket %s\n",
				s.ID(), s.Addr(), server.AdminSocket(cfg.Dir))
			werr := s.Wait(ctx)
			if err := s.Stop(); err != nil {
				log.Error("stop", "err", err)
			}
			return werr
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", "", "data dir (required)")
	f.Uint64Var(&nodeID, "node-id", 0, "this node's ID (first start only)")
	f.StringVar(&cfg.Listen, "listen", "", "QUIC listen address, HOST:PORT (default: this node's address in --peers)")
	f.StringVar(&peers, "peers", "", "every node's QUIC address: 1=HOST:PORT,2=HOST:PORT,... (temporary, until join)")
	f.IntVar(&cfg.Layout.Groups, "groups", 16, "number of data groups (first start only)")
	f.IntVar(&cfg.Layout.VShards, "vshards", 1024, "number of vShards, a power of two from 16 to 16384 (first start only)")
	f.IntVar(&cfg.Layout.RF, "rf", 3, "replicas per group (first start only)")
	f.StringVar(&cfg.CADir, "ca-dir", "", "dir with the cluster CA (ca.crt, ca.key), to issue this node's certificate at first start")
	f.DurationVar(&cfg.TickInterval, "tick", 100*time.Millisecond, "Raft tick interval")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	cmd.MarkFlagRequired("dir")
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}
