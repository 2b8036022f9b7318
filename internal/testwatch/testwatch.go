// Package testwatch makes a hung test binary say where it hangs in the last
// lines of its output.
//
// When a test outlives -test.timeout, the testing package panics and dumps
// every goroutine: with a few clusters' worth of transport and Raft
// goroutines that is thousands of lines, and a CI log that keeps only its
// tail loses the one stack that matters, the test's own. Main arms a
// watchdog shortly before the timeout that writes the whole dump to a file
// and then prints, last, the stacks of the goroutines running test code,
// cut down to this module's frames, and exits.
package testwatch

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Main runs the tests of m under the watchdog, then checks for leaked
// goroutines (goleak.VerifyTestMain), and exits.
func Main(m *testing.M, opts ...goleak.Option) {
	Watch()
	goleak.VerifyTestMain(m, opts...)
}

// Watch arms the watchdog for the rest of the test binary's life; call it
// from TestMain before m.Run.
func Watch() {
	if !flag.Parsed() {
		flag.Parse()
	}
	if d := fireAfter(timeoutFlag()); d > 0 {
		time.AfterFunc(d, func() {
			report(os.Stderr, d)
			os.Exit(3)
		})
	}
}

// timeoutFlag is the binary's -test.timeout, zero when unset.
func timeoutFlag() time.Duration {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return 0
	}
	d, _ := g.Get().(time.Duration)
	return d
}

// fireAfter is when the watchdog fires for a binary with the given
// timeout: a tenth of it before the testing package's own panic, at least
// 2 seconds (a loaded machine may run the timer late) but no more than half
// the timeout, and at most 30 seconds, so that the report is the end of the
// output. Zero means no watchdog.
func fireAfter(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		return 0
	}
	margin := min(max(timeout/10, 2*time.Second), timeout/2, 30*time.Second)
	return timeout - margin
}

// module is the import path prefix of this module's frames.
const module = "github.com/nodedb/nodedb-cluster/"

// maxFrames bounds the frames printed per goroutine.
const maxFrames = 16

// report writes the full dump to a file and a summary of the test
// goroutines to w.
func report(w io.Writer, after time.Duration) {
	dump := allStacks()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("testwatch-%d.txt", os.Getpid()))
	if err := os.WriteFile(path, dump, 0o644); err != nil {
		path = "(not written: " + err.Error() + ")"
	}
	fmt.Fprintf(w, "\ntestwatch: tests still running after %v, close to -test.timeout; all goroutines: %s\n", after.Round(time.Second), path)
	fmt.Fprint(w, Summary(dump))
}

func allStacks() []byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Summary returns, from a dump in runtime.Stack's format, the goroutines
// that run test code (a frame in a _test.go file), each as its header and
// its frames from this module, innermost first, without arguments.
// Goroutines with the same frames are printed once with a count, and the
// goroutines running a test function come last, nearest the end of the
// output.
func Summary(dump []byte) string {
	type group struct {
		header string
		frames string
		count  int
		runner bool
	}
	var groups []*group
	byFrames := map[string]*group{}
	n := 0
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		// TestMain's goroutine waits for the tests: it says nothing.
		if !bytes.Contains(g, []byte("_test.go:")) || bytes.Contains(g, []byte(".TestMain(")) {
			continue
		}
		n++
		lines := strings.Split(strings.TrimSpace(string(g)), "\n")
		var fb strings.Builder
		frames, runner := 0, false
		// After the header, a frame is a function line and a file line.
		for i := 1; i+1 < len(lines); i += 2 {
			fn, file := lines[i], strings.TrimSpace(lines[i+1])
			runner = runner || strings.HasPrefix(fn, "testing.tRunner(")
			if frames == maxFrames || !strings.HasPrefix(fn, module) && !strings.Contains(file, "_test.go:") {
				continue
			}
			if p := strings.LastIndexByte(fn, '('); p > 0 {
				fn = fn[:p]
			}
			if p := strings.LastIndexByte(file, ' '); p > 0 {
				file = file[:p] // the PC offset
			}
			fmt.Fprintf(&fb, "    %s  %s\n", strings.TrimPrefix(fn, module), filepath.Base(file))
			frames++
		}
		key := fb.String()
		if gr := byFrames[key]; gr != nil {
			gr.count++
			continue
		}
		gr := &group{header: lines[0], frames: key, count: 1, runner: runner}
		byFrames[key] = gr
		groups = append(groups, gr)
	}
	var b strings.Builder
	for _, last := range []bool{false, true} {
		for _, gr := range groups {
			if gr.runner != last {
				continue
			}
			b.WriteString(gr.header)
			if gr.count > 1 {
				fmt.Fprintf(&b, " (and %d more like it)", gr.count-1)
			}
			b.WriteByte('\n')
			b.WriteString(gr.frames)
		}
	}
	fmt.Fprintf(&b, "testwatch: %d goroutines run test code\n", n)
	return b.String()
}
