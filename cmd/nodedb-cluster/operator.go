package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/server"
)

// Operator commands reach a running node through its admin socket,
// DIR/admin.sock: whoever can open it owns the node's data dir anyway.

func newTokenCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	var (
		dir string
		ttl time.Duration
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a single-use join token",
		Long: `Create a join token for one new node. The token is single use and expires
after --ttl; its state lives in the metadata group, so any node can admit the
joiner. The token is printed alone on the last line, for scripts:

  TOKEN=$(nodedb-cluster token create --dir n1 | tail -1)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			t, err := server.NewAdminClient(dir).CreateToken(ctx, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "join token (single use, expires %s):\n%s\n", t.Expires.Format(time.RFC3339), t.Token)
			return nil
		},
	}
	create.Flags().StringVar(&dir, "dir", "", "data dir of a running node (required)")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token stays valid")
	create.MarkFlagRequired("dir")
	var revokeDir string
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token (the part before the first dot)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			id, _, _ := strings.Cut(args[0], ".")
			if err := server.NewAdminClient(revokeDir).RevokeToken(ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", id)
			return nil
		},
	}
	revoke.Flags().StringVar(&revokeDir, "dir", "", "data dir of a running node (required)")
	revoke.MarkFlagRequired("dir")
	var listDir string
	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens and their states (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := server.NewAdminClient(listDir).Cluster(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tEXPIRES\tNODE")
			for _, t := range st.Tokens {
				node := "-"
				if t.Node != 0 {
					node = fmt.Sprintf("n%d", t.Node)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.State, t.Expires.Format(time.RFC3339), node)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&listDir, "dir", "", "data dir of a running node (required)")
	list.MarkFlagRequired("dir")
	cmd.AddCommand(create, revoke, list)
	return cmd
}

// statusSource reads the cluster status from a node's admin socket (--dir)
// or from the client API (--endpoints).
type statusSource struct {
	dir string
	ep  endpoints
}

func (s *statusSource) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&s.dir, "dir", "", "data dir of a running node (its admin socket); default: ask --endpoints")
	s.ep.flags(cmd)
}

func (s *statusSource) get(ctx context.Context) (server.ClusterStatus, error) {
	if s.dir != "" {
		ctx, cancel := context.WithTimeout(ctx, s.ep.timeout)
		defer cancel()
		return server.NewAdminClient(s.dir).Cluster(ctx)
	}
	return s.ep.clusterStatus(ctx)
}

func newStatusCommand() *cobra.Command {
	var (
		src    statusSource
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the cluster's topology and routing as a node has applied it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := src.get(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printClusterStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	src.flags(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (stable field names, for scripts)")
	return cmd
}

// newListCommand is nodes, groups or vshards: one part of the status.
func newListCommand(use, short string, part func(server.ClusterStatus) any, text func(io.Writer, server.ClusterStatus)) *cobra.Command {
	var (
		src    statusSource
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := src.get(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), part(st))
			}
			text(cmd.OutOrStdout(), st)
			return nil
		},
	}
	src.flags(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newNodesCommand() *cobra.Command {
	return newListCommand("nodes", "List the cluster's nodes", func(st server.ClusterStatus) any { return st.Nodes }, printNodes)
}

func newGroupsCommand() *cobra.Command {
	return newListCommand("groups", "List the Raft groups, their replicas and leaders", func(st server.ClusterStatus) any { return st.Groups }, printGroups)
}

func newVShardsCommand() *cobra.Command {
	return newListCommand("vshards", "List the routing table: vShard, group, epoch", func(st server.ClusterStatus) any { return st.VShards }, func(out io.Writer, st server.ClusterStatus) {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VSHARDS\tGROUP\tEPOCH")
		// Runs of consecutive vShards with the same route print as one line.
		for i := 0; i < len(st.VShards); {
			j := i
			for j+1 < len(st.VShards) && st.VShards[j+1].Group == st.VShards[i].Group && st.VShards[j+1].Epoch == st.VShards[i].Epoch {
				j++
			}
			fmt.Fprintf(tw, "%d-%d\t%d\t%d\n", st.VShards[i].ID, st.VShards[j].ID, st.VShards[i].Group, st.VShards[i].Epoch)
			i = j + 1
		}
		tw.Flush()
	})
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printClusterStatus(out io.Writer, st server.ClusterStatus) {
	fmt.Fprintf(out, "cluster %s: %d vShards, RF %d, peers over %s, routing version %d (as node %d has applied it; metadata leader n%d)\n",
		st.ClusterID, st.VShardCount, st.ReplicationFactor, transportName(st.Transport), st.RoutingVersion, st.Node, st.MetaLeader)
	fmt.Fprintln(out)
	printNodes(out, st)
	fmt.Fprintln(out)
	printGroups(out, st)
	if len(st.Migrations) > 0 {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nMIGRATION\tKIND\tPHASE\tATTEMPT\tAGE\tNOTE")
		for _, m := range st.Migrations {
			note := "-"
			if m.Quarantined {
				note = "QUARANTINED: " + m.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.0fs\t%s\n", m.ID, m.Kind, m.Phase, m.Attempt, m.AgeSeconds, note)
		}
		tw.Flush()
	}
}

func printNodes(out io.Writer, st server.ClusterStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tLIVENESS\tPEER ADDR\tAPI ADDR\tZONE")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "n%d\t%s\t%s\t%s\t%s\t%s\n", n.ID, n.State, n.Liveness, n.PeerAddr, dash(n.APIAddr), dash(n.Zone))
	}
	tw.Flush()
}

func printGroups(out io.Writer, st server.ClusterStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tVSHARDS\tLEADER\tVOTERS\tLEARNERS")
	for _, g := range st.Groups {
		leader := "-"
		if g.Leader != 0 {
			leader = fmt.Sprintf("n%d", g.Leader)
		}
		name := fmt.Sprint(g.ID)
		if g.ID == 0 {
			name = "0 (meta)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", name, g.VShards, leader, nodeList(g.Voters), nodeList(g.Learners))
	}
	tw.Flush()
}

func nodeList(ns []uint64) string {
	if len(ns) == 0 {
		return "-"
	}
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = fmt.Sprintf("n%d", n)
	}
	return strings.Join(parts, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
