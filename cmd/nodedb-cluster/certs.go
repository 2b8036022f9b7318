package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
)

func newCertsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create the cluster CA and node certificates",
		Long: `Create the cluster's certificate authority and node certificates for
mutual TLS between nodes (see docs/security.md). Keys are written with mode
0600 and are never overwritten.`,
	}
	cmd.AddCommand(newCertsCACommand(), newCertsNodeCommand())
	return cmd
}

func newCertsCACommand() *cobra.Command {
	var dir, name string
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create a cluster CA (ca.crt, ca.key) in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.NewCA(name, time.Now())
			if err != nil {
				return err
			}
			if err := pki.WriteCA(dir, ca); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created cluster CA in %s (valid until %s)\nCA public key hash: %s\n",
				dir, ca.Cert.NotAfter.UTC().Format(time.RFC3339), ca.PublicKeyHash())
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "where to write ca.crt and ca.key (required)")
	cmd.Flags().StringVar(&name, "name", "nodedb-cluster", "cluster name in the CA's subject")
	cmd.MarkFlagRequired("dir")
	return cmd
}

func newCertsNodeCommand() *cobra.Command {
	var (
		caDir, out string
		node       uint64
		hosts      []string
		validity   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Issue a node certificate (node.crt, node.key, ca.crt) into --out",
		Long: `Issue a certificate for node --node-id from the CA in --ca-dir, with a new
key, into --out (a node's DATA_DIR/tls). The node ID is bound into the
certificate as the URI nodedb://node/<id>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return err
			}
			if ca.Key == nil {
				return fmt.Errorf("%s has no ca.key: only the CA's holder can issue certificates", caDir)
			}
			key, err := pki.NewNodeKey()
			if err != nil {
				return err
			}
			cert, err := ca.IssueNode(key.Public(), ids.NodeID(node), hosts, time.Now(), validity)
			if err != nil {
				return err
			}
			if err := pki.WriteNode(out, cert, key); err != nil {
				return err
			}
			if err := pki.WriteCACert(out, ca.Cert); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued a certificate for node %d in %s (valid until %s)\n",
				node, out, cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&caDir, "ca-dir", "", "dir holding ca.crt and ca.key (required)")
	f.StringVar(&out, "out", "", "dir to write node.crt, node.key and ca.crt, e.g. DATA_DIR/tls (required)")
	f.Uint64Var(&node, "node-id", 0, "the node's ID (required)")
	f.StringSliceVar(&hosts, "host", nil, "DNS names or IPs to add to the certificate (informational)")
	f.DurationVar(&validity, "validity", 0, "validity (default 1 year)")
	for _, r := range []string{"ca-dir", "out", "node-id"} {
		cmd.MarkFlagRequired(r)
	}
	return cmd
}
