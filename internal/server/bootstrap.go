package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/pki"
)

// firstNode is the node that bootstraps a cluster.
const firstNode ids.NodeID = 1

// bootstrap creates a new cluster in an empty dir: the CA, node 1's
// certificate, the metadata group with node 1 as its only voter, and the
// Bootstrap entry that defines the cluster (settings, node 1, data groups,
// every vShard assigned). The reconciler then creates the data groups.
//
// Every step is resumable: a bootstrap interrupted at any point and run
// again with --bootstrap on the same dir finishes the same cluster (the
// cluster ID derives from the CA, which is written first) and never creates
// a second one. The dir is a node only once cluster.json is written, last.
func (s *Server) bootstrap(ctx context.Context) error {
	cfg := s.cfg
	if err := cfg.Settings.Validate(); err != nil {
		return err
	}
	if cfg.Listen == "" {
		return errors.New("--listen is required to create a node")
	}
	dir := TLSDir(cfg.Dir)
	ca, err := pki.LoadCA(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if ca, err = pki.NewCA("nodedb", time.Now()); err != nil {
			return err
		}
		if err := pki.WriteCA(dir, ca); err != nil {
			return fmt.Errorf("write CA: %w", err)
		}
	case err != nil:
		return fmt.Errorf("load CA: %w", err)
	case ca.Key == nil:
		return fmt.Errorf("%s holds a CA certificate without its key: not a dir an interrupted bootstrap left; use an empty dir", dir)
	}
	if _, _, err := pki.LoadNode(dir); errors.Is(err, fs.ErrNotExist) {
		key, err := pki.NewNodeKey()
		if err != nil {
			return err
		}
		cert, err := ca.IssueNode(key.Public(), firstNode, hostsOf(s.advertise()), time.Now(), 0)
		if err != nil {
			return err
		}
		if err := pki.WriteNode(dir, cert, key); err != nil {
			return fmt.Errorf("write node certificate: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("load node certificate: %w", err)
	}
	s.id, s.clusterID, s.vshards = firstNode, clusterIDOf(ca), cfg.Settings.VShards
	s.log = cfg.Logger.With("node", uint64(s.id))
	id, verifier, err := loadIdentity(dir, s.id, s.log)
	if err != nil {
		return err
	}
	if err := s.open(id, verifier, nil); err != nil {
		return err
	}
	me := cluster.Replica{Replica: 1, Node: firstNode}
	if err := s.node.BootstrapGroup(MetaGroup, me.Replica, []cluster.Replica{me}); err != nil && !errors.Is(err, cluster.ErrReplicaExists) {
		return fmt.Errorf("bootstrap the metadata group: %w", err)
	}
	if st := s.view.get(); st == nil {
		keyDER, err := x509.MarshalPKCS8PrivateKey(ca.Key)
		if err != nil {
			return fmt.Errorf("encode CA key: %w", err)
		}
		e := meta.NewBootstrap(&metapb.ClusterSettings{
			ClusterId:         s.clusterID,
			VshardCount:       uint32(cfg.Settings.VShards),
			ReplicationFactor: uint32(cfg.Settings.RF),
			CaCertDer:         ca.Cert.Raw,
			CaKeyDer:          keyDER,
			InitialGroups:     uint32(cfg.Settings.Groups),
		}, &metapb.Node{Id: uint64(firstNode), PeerAddr: s.advertise(), ApiAddr: cfg.API, Zone: cfg.Zone}, uint32(cfg.Settings.Groups))
		if _, err := s.proposeMeta(ctx, e); err != nil {
			return fmt.Errorf("bootstrap the cluster: %w", err)
		}
	} else if got := st.GetSettings().GetClusterId(); got != s.clusterID {
		return fmt.Errorf("%s holds cluster %s, its CA says %s", cfg.Dir, got, s.clusterID)
	}
	if err := writeStored(cfg.Dir, s.stored()); err != nil {
		return err
	}
	s.created = true
	s.poke()
	s.log.Info("cluster bootstrapped", "cluster", s.clusterID, "vshards", cfg.Settings.VShards, "groups", cfg.Settings.Groups, "rf", cfg.Settings.RF)
	return nil
}

// clusterIDOf names a cluster after its CA: the same CA, the same cluster.
func clusterIDOf(ca *pki.CA) string {
	h := ca.PublicKeyHash() // "sha256:<hex>"
	return h[len("sha256:") : len("sha256:")+16]
}

// hostsOf returns the host of addr for a certificate's SANs.
func hostsOf(addr string) []string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return nil
	}
	return []string{host}
}
