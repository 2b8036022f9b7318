// Command nodedb-cluster is the nodedb-cluster server and CLI.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	root := &cobra.Command{
		Use:           "nodedb-cluster",
		Short:         "A multi-Raft coordination layer with a built-in key-value store",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDevCommand(), newStartCommand(), newTokenCommand(), newStatusCommand(), newNodesCommand(), newGroupsCommand(), newVShardsCommand(), newKVCommand(), newReplicaCommand(), newMigrationsCommand(), newBenchCommand(), newCertsCommand(), newVersionCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "nodedb-cluster", version)
		},
	}
}
