package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/server"
)

// admin sends an operator request under /v1/admin/ to a node's admin
// socket (--dir) or to the client API (--endpoints), and decodes a 200
// answer into out.
func (s *statusSource) admin(ctx context.Context, method, path string, body any, out any) error {
	ep := s.ep
	if s.dir != "" {
		ep.list = "http://admin"
		ep.http = http.Client{Transport: server.AdminTransport(s.dir)}
	}
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return err
		}
	}
	resp, data, err := ep.do(ctx, method, path, b, http.Header{"Content-Type": {"application/json"}})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return errorOf(resp, data)
	}
	return json.Unmarshal(data, out)
}

func newReplicaCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "replica", Short: "Move replicas of data groups between nodes"}
	var (
		src         statusSource
		req         server.MoveRequest
		wait        bool
		waitTimeout time.Duration
		asJSON      bool
	)
	move := &cobra.Command{
		Use:   "move --group G --from N --to M",
		Short: "Move group G's voter on node N to node M, while the group serves",
		Long: `Move a voter of a data group from one node to another while the group serves
traffic: a learner is added on the target and catches up, leadership leaves the
outgoing node if it leads, and one joint-consensus change replaces the outgoing
voter. Every phase is checkpointed in the metadata group; the metadata leader
carries the move out and a new leader takes it over after a crash. Before the
replacement the move can be aborted ('migrations abort ID'); after it, it only
completes.

Placement keeps the nodes' replica counts balanced: a move that unbalances
them may be followed by a rebalancing move of some replica once it ends.

Without --wait the command prints the move's ID and returns; with --wait it
shows the phase, the learner's lag and the elapsed time until the move ends,
and fails if the move was aborted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			var mi server.MigrationInfo
			if err := src.admin(cmd.Context(), http.MethodPost, "/v1/admin/replica-moves", req, &mi); err != nil {
				return err
			}
			if asJSON && !wait {
				return printJSON(out, mi)
			}
			fmt.Fprintf(out, "replica move %s started: group %d, node %d → node %d\n", mi.ID, mi.Group, mi.From, mi.To)
			if !wait {
				return nil
			}
			ctx := cmd.Context()
			if waitTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, waitTimeout)
				defer cancel()
			}
			return waitMove(ctx, &src, mi, out)
		},
	}
	src.flags(move)
	move.Flags().Uint64Var(&req.Group, "group", 0, "data group whose replica moves (required)")
	move.Flags().Uint64Var(&req.From, "from", 0, "node that gives up its voter (required)")
	move.Flags().Uint64Var(&req.To, "to", 0, "node that receives the voter; it must hold no replica of the group (required)")
	move.Flags().BoolVar(&wait, "wait", false, "show progress and wait until the move completes or is aborted")
	move.Flags().DurationVar(&waitTimeout, "wait-timeout", 0, "with --wait, give up waiting after this long (0: no limit; the move goes on)")
	move.Flags().BoolVar(&asJSON, "json", false, "print the started move as JSON (without --wait)")
	for _, f := range []string{"group", "from", "to"} {
		move.MarkFlagRequired(f)
	}
	cmd.AddCommand(move)
	return cmd
}

// waitMove follows move mi until its row is gone, printing a line at every
// change of phase, attempt or last error, and the learner's lag every few
// seconds while it catches up. The outcome is read from the group's
// membership: the target a voter and the outgoing node gone means done.
func waitMove(ctx context.Context, src *statusSource, mi server.MigrationInfo, out io.Writer) error {
	start := time.Now()
	last, lastLag := server.MigrationInfo{}, time.Time{}
	path := "/v1/admin/migrations/" + url.PathEscape(mi.ID)
	for {
		var cur server.MigrationInfo
		err := src.admin(ctx, http.MethodGet, path, nil, &cur)
		var ae *apiError
		switch {
		case errors.As(err, &ae) && ae.Code == server.CodeNotFound:
			return moveOutcome(ctx, src, mi, last, out)
		case err != nil:
			if ctx.Err() != nil {
				return fmt.Errorf("stopped waiting for %s (the move goes on; see 'migrations'): %w", mi.ID, err)
			}
		default:
			changed := cur.Phase != last.Phase || cur.Attempt != last.Attempt || cur.LastError != last.LastError
			lagDue := cur.LearnerLag != nil && time.Since(lastLag) > 2*time.Second
			if changed || lagDue {
				fmt.Fprintf(out, "%6.1fs  phase %-16s attempt %d%s%s\n", time.Since(start).Seconds(), cur.Phase, cur.Attempt, lagText(cur), errText(cur))
				lastLag = time.Now()
			}
			last = cur
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting for %s at phase %s (the move goes on; see 'migrations')", mi.ID, last.Phase)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func lagText(mi server.MigrationInfo) string {
	if mi.LearnerLag == nil {
		return ""
	}
	return fmt.Sprintf("  learner lag %d", *mi.LearnerLag)
}

func errText(mi server.MigrationInfo) string {
	if mi.LastError == "" {
		return ""
	}
	return "  last error: " + mi.LastError
}

// moveOutcome reports how move mi ended, once its row is gone.
func moveOutcome(ctx context.Context, src *statusSource, mi, last server.MigrationInfo, out io.Writer) error {
	st, err := src.get(ctx)
	if err != nil {
		return fmt.Errorf("move %s ended; reading its outcome: %w", mi.ID, err)
	}
	for _, g := range st.Groups {
		if g.ID != mi.Group {
			continue
		}
		if slices.Contains(g.Voters, mi.To) && !slices.Contains(g.Voters, mi.From) {
			fmt.Fprintf(out, "replica move %s complete: group %d voters %v\n", mi.ID, g.ID, g.Voters)
			return nil
		}
		reason := last.LastError
		if reason == "" {
			reason = "see the coordinator's log"
		}
		return fmt.Errorf("replica move %s was aborted (%s): group %d voters %v", mi.ID, reason, g.ID, g.Voters)
	}
	return fmt.Errorf("replica move %s ended and group %d no longer exists", mi.ID, mi.Group)
}

func newMigrationsCommand() *cobra.Command {
	var (
		src    statusSource
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "migrations",
		Short: "List migrations in flight: phase, age, attempt, learner lag, last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list server.MigrationList
			if err := src.admin(cmd.Context(), http.MethodGet, "/v1/admin/migrations", nil, &list); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list.Migrations)
			}
			printMigrations(cmd.OutOrStdout(), list.Migrations)
			return nil
		},
	}
	src.flags(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var abortSrc statusSource
	abort := &cobra.Command{
		Use:   "abort ID",
		Short: "Abort a replica move before its point of no return, or delete a quarantined row",
		Long: `Abort a replica move: its row goes to phase aborting and the metadata leader
undoes it with real Raft changes (leadership back where it was, the learner
removed), then deletes the row. A move past its point of no return (Raft
already replaced the outgoing voter) is refused: it can only complete. A
quarantined row (bad checksum or payload; nothing acts on it) is deleted.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var mi server.MigrationInfo
			if err := abortSrc.admin(cmd.Context(), http.MethodPost, "/v1/admin/migrations/"+url.PathEscape(args[0])+"/abort", nil, &mi); err != nil {
				return err
			}
			if mi.Phase == "deleted" {
				fmt.Fprintf(cmd.OutOrStdout(), "quarantined row %s deleted\n", args[0])
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migration %s is %s; the metadata leader undoes it, then deletes its row\n", mi.ID, mi.Phase)
			return nil
		},
	}
	abortSrc.flags(abort)
	cmd.AddCommand(abort)
	return cmd
}

func printMigrations(out io.Writer, ms []server.MigrationInfo) {
	if len(ms) == 0 {
		fmt.Fprintln(out, "no migrations in flight")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tGROUP\tFROM\tTO\tPHASE\tATTEMPT\tELAPSED\tPHASE AGE\tLAG\tLAST ERROR")
	for _, m := range ms {
		lag := "-"
		if m.LearnerLag != nil {
			lag = fmt.Sprint(*m.LearnerLag)
		}
		last := m.LastError
		if m.Quarantined {
			last = "QUARANTINED: " + m.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n", m.ID, m.Kind, m.Group, m.From, m.To, m.Phase, m.Attempt,
			secs(m.ElapsedSeconds), secs(m.AgeSeconds), lag, last)
	}
	tw.Flush()
}

func secs(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
}
