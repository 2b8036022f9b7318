package netloss

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseCounters(t *testing.T) {
	listing := `table inet t {
	chain in {
		type filter hook input priority filter; policy accept;
		meta l4proto { tcp, udp } th dport @ports numgen random mod 1000000 < 10000 counter packets 25 bytes 3765 drop
		meta l4proto { tcp, udp } th sport @ports th dport != @ports numgen random mod 1000000 < 10000 counter packets 3 bytes 120 drop
		meta l4proto { tcp, udp } th dport @ports counter packets 2500 bytes 376500
		meta l4proto { tcp, udp } th sport @ports th dport != @ports counter packets 300 bytes 12000
	}
}`
	d, p := parseCounters(listing)
	if d != 28 || p != 2800 {
		t.Fatalf("dropped %d passed %d, want 28 and 2800", d, p)
	}
}

func TestInstallRefusals(t *testing.T) {
	for _, pct := range []float64{-1, 0, 100.5, 150} {
		if _, err := Install(context.Background(), "netloss_test", pct, OnArrival); err == nil || !strings.Contains(err.Error(), "percentage") {
			t.Errorf("loss %v%%: got %v, want a refusal of the percentage", pct, err)
		}
	}
	if _, err := Install(context.Background(), "bad name; flush ruleset", 1, OnArrival); err == nil || !strings.Contains(err.Error(), "table name") {
		t.Errorf("a table name with spaces and semicolons: got %v, want a refusal", err)
	}
	if CheckPrivateNamespace() == nil {
		t.Skip("this namespace has loopback only: Install would go ahead here")
	}
	if _, err := Install(context.Background(), "netloss_test", 1, OnArrival); !errors.Is(err, ErrSharedNamespace) {
		t.Fatalf("install in a namespace with other interfaces: got %v, want ErrSharedNamespace", err)
	}
}

// TestDropsAShare sends datagrams to a port of the table over real UDP
// sockets and checks that about the configured share is lost, that what is
// lost is what the counters say, and that Close ends the loss.
func TestDropsAShare(t *testing.T) {
	if !InPrivate() {
		RerunInPrivate(t)
		return
	}
	ctx := context.Background()
	tbl, err := Install(ctx, "netloss_test", 10, OnArrival)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			tbl.Close()
		}
	}()
	recv, send := udpPair(ctx, t, tbl)
	// 5,000 datagrams of 100 bytes fit in the receive buffer, so none is
	// lost to a full buffer: only the table drops.
	if err := recv.SetReadBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	const sent = 5000
	receive := func(n int) int {
		got := 0
		buf := make([]byte, 200)
		for {
			recv.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, _, err := recv.ReadFromUDP(buf); err != nil {
				return got
			}
			if got++; got == n {
				return got
			}
		}
	}
	payload := make([]byte, 100)
	for range sent {
		if _, err := send.Write(payload); err != nil {
			t.Fatalf("send: %v (a packet dropped on arrival must not fail the sender)", err)
		}
	}
	got := receive(sent)
	dropped, passed, err := tbl.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d, received %d; counters: %d dropped, %d passed", sent, got, dropped, passed)
	// Binomial(5000, 0.1): a standard deviation of about 21 packets, so
	// 400-600 lost is more than four deviations either side.
	if lost := sent - got; lost < 400 || lost > 600 {
		t.Fatalf("lost %d of %d datagrams at 10%% loss", lost, sent)
	}
	if dropped != uint64(sent-got) || passed != uint64(got) {
		t.Fatalf("counters %d dropped, %d passed; the receiver saw %d of %d", dropped, passed, got, sent)
	}
	// Without the table nothing is lost.
	closed = true
	if err := tbl.Close(); err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if _, err := send.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	if got := receive(1000); got != 1000 {
		t.Fatalf("after Close: received %d of 1000", got)
	}
}

// TestCutsOff: at 100% every packet of the table's ports is dropped, the
// counters say so, and Close lets them through again.
func TestCutsOff(t *testing.T) {
	if !InPrivate() {
		RerunInPrivate(t)
		return
	}
	ctx := context.Background()
	tbl, err := Install(ctx, "netloss_test", 100, OnArrival)
	if err != nil {
		t.Fatal(err)
	}
	recv, send := udpPair(ctx, t, tbl)
	payload := make([]byte, 100)
	for range 500 {
		if _, err := send.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	recv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := recv.ReadFromUDP(make([]byte, 200)); err == nil {
		t.Fatalf("received a %d-byte datagram through a cut", n)
	}
	if dropped, passed, err := tbl.Counts(ctx); err != nil || dropped != 500 || passed != 0 {
		t.Fatalf("counters %d dropped, %d passed (%v), want 500 and 0", dropped, passed, err)
	}
	if err := tbl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := send.Write(payload); err != nil {
		t.Fatal(err)
	}
	recv.SetReadDeadline(time.Now().Add(time.Second))
	if _, _, err := recv.ReadFromUDP(make([]byte, 200)); err != nil {
		t.Fatalf("after Close: %v", err)
	}
}

// TestDepartureFailsUDPSends shows what OnDeparture is for: a UDP packet
// dropped on its way out fails the sender's send with EPERM.
func TestDepartureFailsUDPSends(t *testing.T) {
	if !InPrivate() {
		RerunInPrivate(t)
		return
	}
	ctx := context.Background()
	tbl, err := Install(ctx, "netloss_test_out", 50, OnDeparture)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	_, send := udpPair(ctx, t, tbl)
	failed := 0
	for range 400 {
		if _, err := send.Write(make([]byte, 10)); err != nil {
			if !errors.Is(err, syscall.EPERM) {
				t.Fatalf("send: %v, want EPERM or nothing", err)
			}
			failed++
		}
	}
	dropped, _, err := tbl.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Binomial(400, 0.5): a standard deviation of 10.
	if failed < 140 || failed > 260 || uint64(failed) != dropped {
		t.Fatalf("%d of 400 sends failed, %d dropped, want about 200 of each", failed, dropped)
	}
}

// udpPair returns a receiving UDP socket on 127.0.0.1, whose port it adds
// to tbl, and a socket sending to it; both close at the end of t.
func udpPair(ctx context.Context, t *testing.T, tbl *Table) (recv, send *net.UDPConn) {
	t.Helper()
	recv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { recv.Close() })
	send, err = net.DialUDP("udp", nil, recv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { send.Close() })
	if err := tbl.Add(ctx, recv.LocalAddr().String()); err != nil {
		t.Fatal(err)
	}
	return recv, send
}
