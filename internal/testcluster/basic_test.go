package testcluster

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestPutGetAcrossGroups(t *testing.T) {
	c := New(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	for i := range 50 {
		k := fmt.Appendf(nil, "key-%d", i)
		r, err := cl.Put(ctx, k, fmt.Appendf(nil, "v%d", i), nil)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		if r.Version != 1 {
			t.Fatalf("put %s: version %d, want 1", k, r.Version)
		}
	}
	for i := range 50 {
		k := fmt.Appendf(nil, "key-%d", i)
		got, err := cl.Get(ctx, k)
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		if !got.Found || string(got.Value) != fmt.Sprintf("v%d", i) || got.Version != 1 {
			t.Fatalf("get %s: %+v", k, got)
		}
	}
	for _, g := range c.Groups() {
		if _, err := c.WaitConverged(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
	}
}
