// Package failpoint injects failures at named points of the code, for crash
// and fault tests of a real process.
//
// A failpoint is a call at a point worth breaking:
//
//	if err := failpoint.Inject("join.after-propose"); err != nil {
//		return err
//	}
//
// It does nothing unless the failpoint is configured, either for the whole
// process through the environment variable
//
//	NODEDB_FAILPOINTS="join.after-propose=exit;join.after-sign=2*sleep(500)"
//
// or from a test in the same process with Enable. The actions are:
//
//   - exit: the process exits at once with status 86 (ExitCode), as a crash
//     would: no deferred function runs, nothing is flushed;
//   - panic: Inject panics with an *InjectedError;
//   - error: Inject returns an *InjectedError naming the failpoint, which
//     matches ErrInjected with errors.Is;
//   - sleep(ms): Inject sleeps that many milliseconds, then returns nil.
//
// Any action may be prefixed with "N*" (a positive integer N) to fire only
// the first N times the failpoint is reached; afterwards it does nothing.
//
// The variable is read when the package is initialised, so failpoints fire
// even in code that runs before main. A binary calls Init at start: it reads
// the variable again and reports a malformed one (which configures nothing)
// as an error, so a typo in a test's failpoint list fails loudly instead of
// silently testing nothing.
//
// With no failpoint configured, Inject costs one atomic load.
//
// docs/failpoints.md lists the failpoints of the code base.
package failpoint

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// EnvVar is the environment variable that configures failpoints.
const EnvVar = "NODEDB_FAILPOINTS"

// ExitCode is the exit status of the exit action.
const ExitCode = 86

// MaxSleep bounds the sleep action.
const MaxSleep = time.Hour

// ErrInjected is matched (errors.Is) by every error an error action returns.
var ErrInjected = errors.New("failpoint: injected error")

// InjectedError is the error returned by, and the value panicked with by,
// a failpoint.
type InjectedError struct {
	Name   string // the failpoint
	Action string // "error" or "panic"
}

func (e *InjectedError) Error() string {
	return "failpoint " + e.Name + ": injected " + e.Action
}

// Is makes an *InjectedError match ErrInjected.
func (e *InjectedError) Is(target error) bool { return target == ErrInjected }

type kind uint8

const (
	actExit kind = iota + 1
	actPanic
	actError
	actSleep
)

// point is one configured failpoint. It is immutable but for left.
type point struct {
	kind    kind
	sleep   time.Duration
	limited bool
	left    atomic.Int64 // firings left when limited
}

var (
	// active is the configured failpoints, nil when there are none (the one
	// load Inject pays). The map is never modified once stored.
	active atomic.Pointer[map[string]*point]

	mu      sync.Mutex // serializes changes to active and the two sets below
	fromEnv map[string]*point
	enabled map[string][]*point // Enable stack per name, innermost last
)

// init reads the variable so failpoints fire before main calls Init; a
// malformed variable configures nothing, and Init reports it.
func init() {
	_ = load()
}

// Init reads NODEDB_FAILPOINTS again and configures the failpoints it
// names, replacing those read before (failpoints from Enable stay). A
// malformed variable is an error and configures nothing from the variable.
// A binary calls it first thing and refuses to start on error.
func Init() error {
	return load()
}

func load() error {
	spec := os.Getenv(EnvVar)
	pts, err := parse(spec)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		fromEnv = nil
		publishLocked()
		return fmt.Errorf("failpoint: %s=%q: %w", EnvVar, spec, err)
	}
	fromEnv = pts
	publishLocked()
	return nil
}

// Inject runs the failpoint name: nothing (nil) unless it is configured;
// otherwise its action, which may exit the process, panic, sleep, or return
// an *InjectedError.
func Inject(name string) error {
	m := active.Load()
	if m == nil {
		return nil
	}
	return fire(*m, name)
}

func fire(m map[string]*point, name string) error {
	p := m[name]
	if p == nil {
		return nil
	}
	if p.limited && p.left.Add(-1) < 0 {
		return nil
	}
	switch p.kind {
	case actExit:
		fmt.Fprintf(os.Stderr, "failpoint %s: exit %d\n", name, ExitCode)
		os.Exit(ExitCode)
	case actPanic:
		panic(&InjectedError{Name: name, Action: "panic"})
	case actError:
		return &InjectedError{Name: name, Action: "error"}
	case actSleep:
		time.Sleep(p.sleep)
	}
	return nil
}

// Enable configures failpoint name with action (the grammar of the
// environment variable: "exit", "panic", "error", "sleep(ms)", optionally
// prefixed by "N*") until disable is called. It takes precedence over the
// environment variable and over earlier Enables of the same name, which
// apply again once disabled. disable may be called more than once.
func Enable(name, action string) (disable func(), err error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("failpoint: %w", err)
	}
	p, err := parseAction(action)
	if err != nil {
		return nil, fmt.Errorf("failpoint %s: %w", name, err)
	}
	mu.Lock()
	if enabled == nil {
		enabled = map[string][]*point{}
	}
	enabled[name] = append(enabled[name], p)
	publishLocked()
	mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			stack := enabled[name]
			for i, q := range stack {
				if q == p {
					stack = append(stack[:i:i], stack[i+1:]...)
					break
				}
			}
			if len(stack) == 0 {
				delete(enabled, name)
			} else {
				enabled[name] = stack
			}
			publishLocked()
		})
	}, nil
}

// publishLocked stores the merged configuration in active. Caller holds mu.
func publishLocked() {
	if len(fromEnv) == 0 && len(enabled) == 0 {
		active.Store(nil)
		return
	}
	m := make(map[string]*point, len(fromEnv)+len(enabled))
	for n, p := range fromEnv {
		m[n] = p
	}
	for n, stack := range enabled {
		m[n] = stack[len(stack)-1]
	}
	active.Store(&m)
}

// parse parses a failpoint list: entries "name=action" separated by ';'.
// Blanks around entries, names and actions, and empty entries, are ignored.
func parse(spec string) (map[string]*point, error) {
	m := map[string]*point{}
	for i, entry := range strings.Split(spec, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, action, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("entry %d %q: want name=action", i+1, entry)
		}
		name, action = strings.TrimSpace(name), strings.TrimSpace(action)
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("entry %d %q: %w", i+1, entry, err)
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("entry %d %q: failpoint %s is configured twice", i+1, entry, name)
		}
		p, err := parseAction(action)
		if err != nil {
			return nil, fmt.Errorf("entry %d %q: %w", i+1, entry, err)
		}
		m[name] = p
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}

const maxNameLen = 128

// checkName accepts names made of [a-z0-9._-], as in docs/failpoints.md.
func checkName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("failpoint name must be 1 to %d characters, got %q", maxNameLen, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("failpoint name %q: only a-z, 0-9, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

const actionHelp = "want exit, panic, error or sleep(ms), optionally prefixed by N*"

func parseAction(s string) (*point, error) {
	p := &point{}
	if n, rest, ok := strings.Cut(s, "*"); ok {
		count, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		if err != nil || count <= 0 {
			return nil, fmt.Errorf("action %q: count %q is not a positive integer", s, n)
		}
		p.limited = true
		p.left.Store(count)
		s = strings.TrimSpace(rest)
	}
	switch s {
	case "exit":
		p.kind = actExit
	case "panic":
		p.kind = actPanic
	case "error":
		p.kind = actError
	default:
		arg, ok := strings.CutPrefix(s, "sleep(")
		if arg, ok2 := strings.CutSuffix(arg, ")"); ok && ok2 {
			ms, err := strconv.ParseInt(strings.TrimSpace(arg), 10, 64)
			if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > MaxSleep {
				return nil, fmt.Errorf("action %q: sleep takes milliseconds from 0 to %d", s, MaxSleep.Milliseconds())
			}
			p.kind, p.sleep = actSleep, time.Duration(ms)*time.Millisecond
			break
		}
		return nil, fmt.Errorf("unknown action %q: %s", s, actionHelp)
	}
	return p, nil
}
