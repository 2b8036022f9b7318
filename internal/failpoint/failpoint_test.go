package failpoint

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	good := map[string]map[string]string{
		"":                                  {},
		" ; ;":                              {},
		"a=exit":                            {"a": "exit"},
		"join.before-propose=panic;b=error": {"join.before-propose": "panic", "b": "error"},
		" a = sleep(250) ; b=3*error ;":     {"a": "sleep", "b": "error"},
		"x_y-z.9=1*exit":                    {"x_y-z.9": "exit"},
		"s=sleep( 0 )":                      {"s": "sleep"},
	}
	kinds := map[kind]string{actExit: "exit", actPanic: "panic", actError: "error", actSleep: "sleep"}
	for spec, want := range good {
		m, err := parse(spec)
		if err != nil {
			t.Errorf("parse(%q): %v", spec, err)
			continue
		}
		if len(m) != len(want) {
			t.Errorf("parse(%q): %d failpoints, want %d", spec, len(m), len(want))
		}
		for n, k := range want {
			if p := m[n]; p == nil || kinds[p.kind] != k {
				t.Errorf("parse(%q): %s is %+v, want %s", spec, n, p, k)
			}
		}
	}
	m, _ := parse("a=sleep(250);b=3*error")
	if m["a"].sleep != 250*time.Millisecond || m["a"].limited {
		t.Errorf("sleep(250) parsed as %+v", m["a"])
	}
	if !m["b"].limited || m["b"].left.Load() != 3 {
		t.Errorf("3*error parsed as %+v", m["b"])
	}

	bad := map[string]string{
		"a":                    "want name=action",
		"=exit":                "failpoint name",
		"A=exit":               "only a-z",
		"a b=exit":             "only a-z",
		"a=":                   "unknown action",
		"a=crash":              "unknown action",
		"a=Exit":               "unknown action",
		"a=sleep":              "unknown action",
		"a=sleep(x)":           "sleep takes milliseconds",
		"a=sleep(-1)":          "sleep takes milliseconds",
		"a=sleep(99999999999)": "sleep takes milliseconds",
		"a=0*exit":             "not a positive integer",
		"a=-1*exit":            "not a positive integer",
		"a=x*exit":             "not a positive integer",
		"a=exit;a=error":       "configured twice",
		"a=exit;;b=nope":       "entry 3",
	}
	for spec, frag := range bad {
		if _, err := parse(spec); err == nil || !strings.Contains(err.Error(), frag) {
			t.Errorf("parse(%q) = %v, want an error containing %q", spec, err, frag)
		}
	}
}

func TestInitReportsABadVariable(t *testing.T) {
	t.Setenv(EnvVar, "a=bogus")
	err := Init()
	if err == nil || !strings.Contains(err.Error(), EnvVar) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("Init with a bad variable: %v", err)
	}
	if active.Load() != nil {
		t.Fatal("a bad variable configured failpoints")
	}
	t.Setenv(EnvVar, "fp.test-env=error")
	if err := Init(); err != nil {
		t.Fatal(err)
	}
	if err := Inject("fp.test-env"); !errors.Is(err, ErrInjected) {
		t.Fatalf("Inject after Init: %v", err)
	}
	t.Setenv(EnvVar, "")
	if err := Init(); err != nil {
		t.Fatal(err)
	}
	if err := Inject("fp.test-env"); err != nil {
		t.Fatalf("Inject after clearing the variable: %v", err)
	}
	if active.Load() != nil {
		t.Fatal("no failpoint configured, but Inject is not on its fast path")
	}
}

func TestErrorAction(t *testing.T) {
	if err := Inject("fp.error"); err != nil {
		t.Fatalf("unconfigured failpoint: %v", err)
	}
	disable, err := Enable("fp.error", "error")
	if err != nil {
		t.Fatal(err)
	}
	err = Inject("fp.error")
	var ie *InjectedError
	if !errors.Is(err, ErrInjected) || !errors.As(err, &ie) || ie.Name != "fp.error" || !strings.Contains(err.Error(), "fp.error") {
		t.Fatalf("Inject: %v", err)
	}
	if err := Inject("fp.other"); err != nil {
		t.Fatalf("another failpoint fired: %v", err)
	}
	disable()
	disable() // idempotent
	if err := Inject("fp.error"); err != nil {
		t.Fatalf("after disable: %v", err)
	}
	if active.Load() != nil {
		t.Fatal("all disabled, but Inject is not on its fast path")
	}
}

func TestCountedAction(t *testing.T) {
	disable, err := Enable("fp.count", "2*error")
	if err != nil {
		t.Fatal(err)
	}
	defer disable()
	for i, want := range []bool{true, true, false, false} {
		if got := Inject("fp.count") != nil; got != want {
			t.Fatalf("call %d fired=%v, want %v", i+1, got, want)
		}
	}
}

func TestEnableStacks(t *testing.T) {
	d1, err := Enable("fp.stack", "error")
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Enable("fp.stack", "sleep(0)")
	if err != nil {
		t.Fatal(err)
	}
	if err := Inject("fp.stack"); err != nil {
		t.Fatalf("innermost Enable should win: %v", err)
	}
	d2()
	if err := Inject("fp.stack"); !errors.Is(err, ErrInjected) {
		t.Fatalf("outer Enable should apply again: %v", err)
	}
	d1()
	if err := Inject("fp.stack"); err != nil {
		t.Fatal(err)
	}
}

func TestEnableRefusesBadInput(t *testing.T) {
	if _, err := Enable("Bad Name", "error"); err == nil {
		t.Fatal("bad name accepted")
	}
	if _, err := Enable("fp.x", "explode"); err == nil {
		t.Fatal("bad action accepted")
	}
}

func TestSleepAction(t *testing.T) {
	disable, err := Enable("fp.sleep", "sleep(50)")
	if err != nil {
		t.Fatal(err)
	}
	defer disable()
	start := time.Now()
	if err := Inject("fp.sleep"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("slept %v, want >= 50ms", d)
	}
}

func TestPanicAction(t *testing.T) {
	disable, err := Enable("fp.panic", "panic")
	if err != nil {
		t.Fatal(err)
	}
	defer disable()
	defer func() {
		r := recover()
		ie, ok := r.(*InjectedError)
		if !ok || ie.Name != "fp.panic" || ie.Action != "panic" {
			t.Fatalf("recovered %v, want an *InjectedError for fp.panic", r)
		}
	}()
	Inject("fp.panic")
	t.Fatal("Inject did not panic")
}

const childEnv = "FAILPOINT_TEST_CHILD"

// TestExitAction re-runs the test binary with the exit action configured
// through the environment, as a crash test runs the server binary.
func TestExitAction(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		if err := Init(); err != nil {
			os.Stdout.WriteString("init: " + err.Error() + "\n")
			os.Exit(2)
		}
		defer os.Stdout.WriteString("deferred function ran\n")
		os.Stdout.WriteString("before\n")
		Inject("fp.exit")
		os.Stdout.WriteString("after\n")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestExitAction$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1", EnvVar+"=fp.exit=exit")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitCode {
		t.Fatalf("child: %v, want exit status %d; output:\n%s", err, ExitCode, out)
	}
	if s := string(out); !strings.Contains(s, "before") || strings.Contains(s, "after") || strings.Contains(s, "deferred") {
		t.Fatalf("child output:\n%s\nwant it to stop right at the failpoint", s)
	}
	if !strings.Contains(string(ee.Stderr), "failpoint fp.exit: exit 86") {
		t.Fatalf("child stderr: %s", ee.Stderr)
	}
}

func BenchmarkInjectNoneConfigured(b *testing.B) {
	if active.Load() != nil {
		b.Skip("failpoints configured")
	}
	for b.Loop() {
		if Inject("join.before-propose") != nil {
			b.Fatal("fired")
		}
	}
}

func BenchmarkInjectOtherConfigured(b *testing.B) {
	disable, err := Enable("fp.bench-other", "error")
	if err != nil {
		b.Fatal(err)
	}
	defer disable()
	for b.Loop() {
		if Inject("join.before-propose") != nil {
			b.Fatal("fired")
		}
	}
}
