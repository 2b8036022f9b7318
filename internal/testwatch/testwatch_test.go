package testwatch

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

// TestHangs is the hung test TestReportIsTheTail runs in a child process.
func TestHangs(t *testing.T) {
	if os.Getenv("TESTWATCH_HANG") == "" {
		t.Skip("run by TestReportIsTheTail")
	}
	blockForever(make(chan struct{}))
}

func blockForever(c chan struct{}) { <-c }

// TestReportIsTheTail: a test binary hung past its timeout ends its output
// with the stack of the hung test, before the testing package's own dump.
func TestReportIsTheTail(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child test binary for seconds")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHangs$", "-test.timeout=5s")
	cmd.Env = append(os.Environ(), "TESTWATCH_HANG=1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 {
		t.Fatalf("child: %v after %v, want exit code 3\n%s", err, time.Since(start), out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tail := strings.Join(lines[max(0, len(lines)-12):], "\n")
	for _, want := range []string{"testwatch: tests still running after", "testwatch.blockForever  testwatch_test.go", "testwatch.TestHangs  testwatch_test.go", "testwatch: 1 goroutines run test code"} {
		if !strings.Contains(tail, want) {
			t.Errorf("the output's tail lacks %q:\n%s", want, tail)
		}
	}
	if strings.Contains(string(out), "panic: test timed out") {
		t.Errorf("the testing package's timeout fired first:\n%s", out)
	}
}

func TestSummaryGroupsAndOrders(t *testing.T) {
	dump := `goroutine 1 [chan receive]:
testing.(*T).Run(0xc000)
	/usr/local/go/src/testing/testing.go:1 +0x1

goroutine 7 [chan receive, 9 minutes]:
github.com/nodedb/nodedb-cluster/internal/server.(*Server).Stop(0xc0001)
	/w/internal/server/server.go:326 +0x5e
github.com/nodedb/nodedb-cluster/client.TestStraightToLeader(0xc000)
	/w/client/routing_test.go:190 +0x10
testing.tRunner(0xc000, 0x1)
	/usr/local/go/src/testing/testing.go:2 +0x1
created by testing.(*T).Run in goroutine 1
	/usr/local/go/src/testing/testing.go:3 +0x1

goroutine 20 [select]:
github.com/nodedb/nodedb-cluster/client.(*Client).Put(0xc0002)
	/w/client/ops.go:10 +0x1
github.com/nodedb/nodedb-cluster/client.TestStraightToLeader.func1()
	/w/client/routing_test.go:99 +0x1
created by github.com/nodedb/nodedb-cluster/client.TestStraightToLeader in goroutine 7
	/w/client/routing_test.go:98 +0x1

goroutine 21 [select]:
github.com/nodedb/nodedb-cluster/client.(*Client).Put(0xc0003)
	/w/client/ops.go:10 +0x1
github.com/nodedb/nodedb-cluster/client.TestStraightToLeader.func1()
	/w/client/routing_test.go:99 +0x1
created by github.com/nodedb/nodedb-cluster/client.TestStraightToLeader in goroutine 7
	/w/client/routing_test.go:98 +0x1

goroutine 30 [IO wait]:
github.com/nodedb/nodedb-cluster/internal/transport.(*FrameReader).Next(0xc0004)
	/w/internal/transport/frame.go:137 +0x5e
`
	want := `goroutine 20 [select]: (and 1 more like it)
    client.(*Client).Put  ops.go:10
    client.TestStraightToLeader.func1  routing_test.go:99
    created by github.com/nodedb/nodedb-cluster/client.TestStraightToLeader in goroutine 7  routing_test.go:98
goroutine 7 [chan receive, 9 minutes]:
    internal/server.(*Server).Stop  server.go:326
    client.TestStraightToLeader  routing_test.go:190
testwatch: 3 goroutines run test code
`
	if got := Summary([]byte(dump)); got != want {
		t.Errorf("summary:\n%s\nwant:\n%s", got, want)
	}
}

func TestFireAfter(t *testing.T) {
	for _, tc := range []struct{ timeout, want time.Duration }{
		{0, 0},
		{2 * time.Second, time.Second},
		{5 * time.Second, 3 * time.Second},
		{time.Minute, 54 * time.Second},
		{10 * time.Minute, 9*time.Minute + 30*time.Second},
	} {
		if got := fireAfter(tc.timeout); got != tc.want {
			t.Errorf("fireAfter(%v) = %v, want %v", tc.timeout, got, tc.want)
		}
	}
}
