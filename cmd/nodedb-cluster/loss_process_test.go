package main

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/netloss"
	"github.com/nodedb/nodedb-cluster/internal/promtext"
)

// TestProcessClusterUnderPacketLoss runs three node processes of the built
// binary, over each peer transport, while 5% of the packets between them
// are lost at random (both directions, nftables in a network namespace of
// the test's own; also dropped as they leave, which fails a UDP send): writes through every node go on being acknowledged,
// linearizable reads through every node see them, and once the loss ends
// every replica converges and no acknowledged write is lost. The client
// API is left alone; only the links between the nodes lose packets.
func TestProcessClusterUnderPacketLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	if !netloss.InPrivate() {
		bin, err := buildBinary()
		if err != nil {
			t.Fatal(err)
		}
		netloss.RerunInPrivate(t, testBinEnv+"="+bin)
		return
	}
	t.Run("quic", func(t *testing.T) { underLoss(t, "quic", netloss.OnArrival, nil) })
	t.Run("tcp", func(t *testing.T) { underLoss(t, "tcp", netloss.OnArrival, []string{"--transport", "tcp"}) })
	// Dropped on departure, as a local firewall or a full conntrack table
	// does: a UDP send fails with EPERM, which QUIC must take as a lost
	// packet, not as the end of the connection.
	t.Run("quic-refused-sends", func(t *testing.T) { underLoss(t, "quicout", netloss.OnDeparture, nil) })
	// TCP's kernel retransmits a segment its own firewall dropped.
	t.Run("tcp-refused-sends", func(t *testing.T) {
		underLoss(t, "tcpout", netloss.OnDeparture, []string{"--transport", "tcp"})
	})
}

func underLoss(t *testing.T, name string, where netloss.Where, allArgs []string) {
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	procs := startProcClusterWith(ctx, t, bin, t.TempDir(), 3, allArgs, "--groups", "4", "--vshards", "64", "--rf", "3")
	waitLeaders(ctx, t, procs, 5)

	loss, err := netloss.Install(ctx, "nodedb_test_loss_"+name, 5, where)
	if err != nil {
		t.Fatal(err)
	}
	lossOn := true
	defer func() {
		if lossOn {
			loss.Close()
		}
	}()
	for _, p := range procs {
		i := slices.Index(p.args, "--listen")
		if i < 0 || i+1 >= len(p.args) {
			t.Fatalf("node %s started without --listen: %v", p.dir, p.args)
		}
		if err := loss.Add(ctx, p.args[i+1]); err != nil {
			t.Fatal(err)
		}
	}

	// Writes through every node, under loss, for a few seconds: dozens of
	// heartbeat rounds and election timeouts (20 ms ticks), thousands of
	// peer packets.
	w := startWriters(ctx, t, procs, 4)
	time.Sleep(4 * time.Second)
	waitCount(ctx, t, w.count, 300)
	t.Logf("%d writes acknowledged in 4s under 5%% peer packet loss", w.count())
	// Linearizable reads through every node see acknowledged writes.
	probe := "probe-" + name
	if _, err := adminOf(procs[0].dir).Put(ctx, probe, []byte("seen")); err != nil {
		t.Fatalf("put %s under loss: %v", probe, err)
	}
	for _, p := range procs {
		got, err := adminOf(p.dir).Get(ctx, probe)
		if err != nil || !got.Found || got.Value != "seen" {
			t.Fatalf("linearizable read of %s through %s under loss: %+v %v", probe, p.dir, got, err)
		}
	}
	w.stop()
	dropped, passed, err := loss.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("peer packets: %d dropped of %d", dropped, dropped+passed)
	if dropped == 0 {
		t.Fatal("no peer packet was dropped: the loss never applied")
	}
	// An operator sees the loss in the nodes' path metrics.
	lossMetric := "nodedb_transport_quic_packets_lost_total"
	if slices.Contains(allArgs, "tcp") {
		lossMetric = "nodedb_transport_tcp_segments_retransmitted_total"
	}
	seen := 0.0
	for _, p := range procs {
		seen += scrapeSum(ctx, t, p.api, lossMetric)
	}
	t.Logf("%s over the nodes: %v", lossMetric, seen)
	if where == netloss.OnArrival && seen == 0 {
		t.Errorf("%s is 0 on every node under loss", lossMetric)
	}

	// The loss ends: every replica converges and holds every acknowledged
	// write.
	lossOn = false
	if err := loss.Close(); err != nil {
		t.Fatal(err)
	}
	for g := uint64(1); g <= 4; g++ {
		waitConverged(ctx, t, procs, g)
	}
	w.verify(ctx, t, procs)
}

// scrapeSum returns the sum of every sample of metric name at api's
// /metrics, 0 if it has none.
func scrapeSum(ctx context.Context, t *testing.T, api, name string) float64 {
	t.Helper()
	sum, _, err := promtext.Scrape(ctx, http.DefaultClient, "http://"+api+"/metrics", name)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}
