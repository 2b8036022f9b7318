// Package netloss drops a share of the packets to and from chosen ports, at
// random, with an nftables table: packet loss on the links between cluster
// members, or a member cut off from the others (100%), for tests and
// benchmarks that run every member on 127.0.0.1.
//
// Packets are dropped on arrival (OnArrival, the input hook): that is loss
// in the network, which the sender never learns of. Dropped on departure
// (OnDeparture, the output hook) they are what a local firewall or a full
// connection-tracking table does: a UDP send fails with EPERM, while TCP
// retransmits as for any loss. Each packet gets one chance: a packet
// between two chosen ports (a QUIC node's one socket talking to another)
// matches the destination rule only, so the loss rate is the same for QUIC
// and TCP.
//
// A table changes the firewall of the network namespace it is installed
// in, so Install refuses a namespace with any interface besides loopback
// (such as the machine's own network). Run the program in a namespace of
// its own: `unshare -n sh -c 'ip link set lo up && exec PROGRAM'` as root.
// The loss comes without added delay (that would need netem, which the
// kernels this was written on lack).
package netloss

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ErrSharedNamespace is returned by Install in a network namespace with an
// interface besides loopback.
var ErrSharedNamespace = errors.New("netloss: this network namespace has interfaces besides loopback: run in a namespace of its own (unshare -n)")

// Where says where packets are dropped.
type Where int

const (
	// OnArrival drops packets as they arrive (nftables' input hook): loss
	// in the network.
	OnArrival Where = iota
	// OnDeparture drops packets as they leave (the output hook): a local
	// firewall's drop, which fails a UDP send with EPERM.
	OnDeparture
)

// Table is an installed nftables table that drops a share of the packets
// to and from its ports. Ports are added with Add; Close removes it.
type Table struct {
	name string
}

// Install creates table name dropping pct percent of the packets of its
// ports (none yet) at where, with a resolution of 1 in a million; 100 drops
// every one, cutting the ports off.
func Install(ctx context.Context, name string, pct float64, where Where) (*Table, error) {
	if !(pct > 0 && pct <= 100) {
		return nil, fmt.Errorf("netloss: loss %v%%: want a percentage above 0, at most 100", pct)
	}
	if !tableName.MatchString(name) {
		return nil, fmt.Errorf("netloss: table name %q: want letters, digits and underscores", name)
	}
	if err := CheckPrivateNamespace(); err != nil {
		return nil, err
	}
	hook := "input"
	if where == OnDeparture {
		hook = "output"
	}
	// The share of packets dropped: a random number below n out of a
	// million; every packet for a cut (numgen's range ends at 999999).
	share := fmt.Sprintf("numgen random mod 1000000 < %d ", int(pct*10_000))
	if pct == 100 {
		share = ""
	}
	ruleset := fmt.Sprintf(`table inet %[1]s {
	set ports { type inet_service; }
	chain in {
		type filter hook %[3]s priority 0; policy accept;
		meta l4proto { tcp, udp } th dport @ports %[2]scounter drop
		meta l4proto { tcp, udp } th sport @ports th dport != @ports %[2]scounter drop
		meta l4proto { tcp, udp } th dport @ports counter
		meta l4proto { tcp, udp } th sport @ports th dport != @ports counter
	}
}
`, name, share, hook)
	if err := nft(ctx, ruleset, "-f", "-"); err != nil {
		return nil, fmt.Errorf("netloss: install table %s: %w", name, err)
	}
	return &Table{name: name}, nil
}

// CheckPrivateNamespace returns ErrSharedNamespace unless every network
// interface of this process's namespace is a loopback interface.
func CheckPrivateNamespace() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("netloss: list the network interfaces: %w", err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			return fmt.Errorf("%w (found %s)", ErrSharedNamespace, i.Name)
		}
	}
	return nil
}

// Add makes the port of addr (HOST:PORT) one whose packets are dropped.
func (t *Table) Add(ctx context.Context, addr string) error {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("netloss: %w", err)
	}
	if _, err := strconv.ParseUint(p, 10, 16); err != nil {
		return fmt.Errorf("netloss: address %q: bad port", addr)
	}
	if err := nft(ctx, "", "add", "element", "inet", t.name, "ports", "{ "+p+" }"); err != nil {
		return fmt.Errorf("netloss: add port %s: %w", p, err)
	}
	return nil
}

// Counts returns the packets of the table's ports dropped and let through
// so far, both directions together.
func (t *Table) Counts(ctx context.Context) (dropped, passed uint64, err error) {
	out, err := exec.CommandContext(ctx, "nft", "list", "chain", "inet", t.name, "in").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("netloss: read the counters of %s: %w", t.name, err)
	}
	dropped, passed = parseCounters(string(out))
	return dropped, passed, nil
}

// Close removes the table: from then on nothing is dropped.
func (t *Table) Close() error {
	if err := nft(context.Background(), "", "delete", "table", "inet", t.name); err != nil {
		return fmt.Errorf("netloss: remove table %s: %w", t.name, err)
	}
	return nil
}

// tableName is what Install accepts as a table name (it goes into the
// ruleset as is).
var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// counter matches one rule's counter in `nft list` output; the rule drops
// when the counter is followed by "drop".
var counter = regexp.MustCompile(`counter packets (\d+) bytes \d+( drop)?`)

// parseCounters sums the packet counters of a table's rules: those of the
// dropping rules, and those of the rules that count what passed.
func parseCounters(listing string) (dropped, passed uint64) {
	for _, m := range counter.FindAllStringSubmatch(listing, -1) {
		v, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			continue
		}
		if m[2] != "" {
			dropped += v
		} else {
			passed += v
		}
	}
	return dropped, passed
}

// nft runs nft with args, feeding it stdin when not empty.
func nft(ctx context.Context, stdin string, args ...string) error {
	cmd := exec.CommandContext(ctx, "nft", args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// privateEnv marks a process that RerunInPrivate started.
const privateEnv = "NODEDB_NETLOSS_PRIVATE"

// InPrivate reports whether this process is a test binary RerunInPrivate
// started in a network namespace of its own.
func InPrivate() bool { return os.Getenv(privateEnv) == "1" }

// RerunInPrivate runs the calling top-level test again, alone, in a new
// test-binary process inside a network namespace of its own (`unshare -n`,
// loopback up), with env added to its environment, and passes, skips or
// fails t as that run did, logging its output. The test itself calls it
// when InPrivate is false, and does its work when true. t is skipped when
// this machine cannot make a namespace (not root, no unshare, nft or ip).
func RerunInPrivate(t *testing.T, env ...string) {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("netloss: RerunInPrivate from subtest %s: call it from the top-level test", t.Name())
	}
	for _, tool := range []string{"unshare", "nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("netloss: no %s on this machine: %v", tool, err)
		}
	}
	if out, err := exec.Command("unshare", "-n", "true").CombinedOutput(); err != nil {
		t.Skipf("netloss: cannot make a network namespace here (unshare -n: %v: %s)", err, bytes.TrimSpace(out))
	}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-5*time.Second))
		defer cancel()
	}
	args := []string{"-n", "sh", "-c", `ip link set lo up && exec "$0" "$@"`, os.Args[0],
		"-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	cmd := exec.CommandContext(ctx, "unshare", args...)
	cmd.Env = append(append(os.Environ(), privateEnv+"=1"), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("run in a network namespace of its own:\n%s", out)
	switch {
	case err != nil:
		t.Fatalf("netloss: the run in its own namespace failed: %v", err)
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name()+" ")):
		t.Skip("skipped in its own namespace")
	case !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")):
		t.Fatalf("netloss: the run in its own namespace did not report %s as passed", t.Name())
	}
}
