package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// defaultEndpoints are the APIs `dev` serves.
const defaultEndpoints = "127.0.0.1:8401,127.0.0.1:8402,127.0.0.1:8403"

// endpoints is the --endpoints flag of the client commands: the nodes'
// API addresses, tried in order until one answers (any node serves any
// request).
type endpoints struct {
	list    string
	timeout time.Duration
	http    http.Client
}

func (e *endpoints) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&e.list, "endpoints", defaultEndpoints, "client API addresses HOST:PORT, comma separated (http:// or https:// prefix allowed)")
	cmd.Flags().DurationVar(&e.timeout, "timeout", 10*time.Second, "give up after this long")
}

func (e *endpoints) urls() []string {
	var out []string
	for _, a := range strings.Split(e.list, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		out = append(out, strings.TrimRight(a, "/"))
	}
	return out
}

// apiError is an error answer of the API.
type apiError struct {
	Status int
	api.ErrorBody
}

func (e *apiError) Error() string {
	if len(e.Hint) > 0 {
		h, _ := json.Marshal(e.Hint)
		return fmt.Sprintf("%s: %s (hint %s)", e.Code, e.Message, h)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// do sends a request to the first endpoint that answers. Connection
// failures move on to the next endpoint; an answer, even an error, is
// final, except a retryable one (unavailable) while time is left.
func (e *endpoints) do(ctx context.Context, method, path string, body []byte, hdr http.Header) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	urls := e.urls()
	if len(urls) == 0 {
		return nil, nil, errors.New("--endpoints is empty")
	}
	var last error
	for attempt := 0; ; attempt++ {
		u := urls[attempt%len(urls)]
		req, err := http.NewRequestWithContext(ctx, method, u+path, strings.NewReader(string(body)))
		if err != nil {
			return nil, nil, err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := e.http.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			resp.Body.Close()
			if rerr != nil {
				return nil, nil, rerr
			}
			if resp.StatusCode < 300 || resp.Header.Get("Retry-After") == "" || resp.StatusCode == http.StatusGatewayTimeout {
				return resp, b, nil
			}
			last = errorOf(resp, b)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("no endpoint answered in time (%s): last error: %w", e.list, last)
		case <-time.After(time.Duration(min(attempt+1, 10)) * 50 * time.Millisecond):
		}
	}
}

func errorOf(resp *http.Response, b []byte) error {
	e := &apiError{Status: resp.StatusCode}
	if json.Unmarshal(b, &e.ErrorBody) != nil || e.Code == "" {
		e.Code, e.Message = "http_"+strconv.Itoa(resp.StatusCode), strings.TrimSpace(string(b))
	}
	return e
}

// clusterStatus reads GET /v1/cluster.
func (e *endpoints) clusterStatus(ctx context.Context) (server.ClusterStatus, error) {
	var st server.ClusterStatus
	resp, b, err := e.do(ctx, http.MethodGet, "/v1/cluster", nil, nil)
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, errorOf(resp, b)
	}
	return st, json.Unmarshal(b, &st)
}

func newKVCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "kv", Short: "Read and write keys through the client API"}
	var e endpoints
	var asJSON, raw bool
	var ifVersion int64
	var idem, consistency string
	var staleness time.Duration
	writeHeaders := func() http.Header {
		h := http.Header{}
		if idem != "" {
			h.Set(api.HeaderIdempotencyKey, idem)
		}
		return h
	}
	writeQuery := func() string {
		if ifVersion >= 0 {
			return "?if_version=" + strconv.FormatInt(ifVersion, 10)
		}
		return ""
	}
	readQuery := func(sep string) string {
		if consistency == "stale" {
			return sep + "consistency=stale&max_staleness=" + url.QueryEscape(staleness.String())
		}
		return ""
	}
	printWrite := func(cmd *cobra.Command, resp *http.Response, b []byte, verb, key string) error {
		if resp.StatusCode != http.StatusOK {
			return errorOf(resp, b)
		}
		if asJSON {
			_, err := cmd.OutOrStdout().Write(b)
			return err
		}
		var w server.WriteResult
		if err := json.Unmarshal(b, &w); err != nil {
			return err
		}
		if verb == "deleted" {
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %q (was version %d, vShard %d)\n", key, w.PrevVersion, w.VShard)
		} else {
			fmt.Fprintf(cmd.OutOrStdout(), "%s %q: version %d, vShard %d\n", verb, key, w.Version, w.VShard)
		}
		return nil
	}
	put := &cobra.Command{
		Use:   "put KEY [VALUE]",
		Short: "Write VALUE at KEY (version 1 on first write, +1 after)",
		Long: `Write VALUE at KEY (version 1 on first write, +1 after).

Without VALUE the value is read from standard input, byte for byte, so
binary values and files work: 'nodedb-cluster kv put photo < photo.jpg'.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var value []byte
			if len(args) == 2 {
				value = []byte(args[1])
			} else {
				var err error
				if value, err = readValue(cmd.InOrStdin()); err != nil {
					return err
				}
			}
			resp, b, err := e.do(cmd.Context(), http.MethodPut, "/v1/kv/"+url.PathEscape(args[0])+writeQuery(), value, writeHeaders())
			if err != nil {
				return err
			}
			return printWrite(cmd, resp, b, "wrote", args[0])
		},
	}
	del := &cobra.Command{
		Use:   "del KEY",
		Short: "Delete KEY",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, b, err := e.do(cmd.Context(), http.MethodDelete, "/v1/kv/"+url.PathEscape(args[0])+writeQuery(), nil, writeHeaders())
			if err != nil {
				return err
			}
			return printWrite(cmd, resp, b, "deleted", args[0])
		},
	}
	get := &cobra.Command{
		Use:   "get KEY",
		Short: "Read KEY (linearizable unless --consistency stale)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, b, err := e.do(cmd.Context(), http.MethodGet, "/v1/kv/"+url.PathEscape(args[0])+readQuery("?"), nil, nil)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return errorOf(resp, b)
			}
			if asJSON {
				v, _ := strconv.ParseUint(resp.Header.Get(api.HeaderVersion), 10, 64)
				vs, _ := strconv.ParseUint(resp.Header.Get(api.HeaderVShard), 10, 32)
				// The shape of a scan's items: a value that is not UTF-8
				// would not survive a JSON string.
				it := api.ScanItem{Key: args[0], Version: v, VShard: uint32(vs)}
				if utf8.Valid(b) {
					it.Value = string(b)
				} else {
					it.ValueBase64 = b
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(it)
			}
			if raw {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return nil
		},
	}
	var prefix string
	var limit int
	scan := &cobra.Command{
		Use:   "scan [PREFIX]",
		Short: "List keys starting with PREFIX (all keys without one)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				prefix = args[0]
			}
			out := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			if !asJSON {
				fmt.Fprintln(tw, "KEY\tVERSION\tVSHARD\tVALUE")
			}
			n := 0
			for cursor := ""; ; {
				page := min(limit-n, 1000)
				if limit <= 0 {
					page = 1000
				}
				q := "/v1/kv?prefix=" + url.QueryEscape(prefix) + "&limit=" + strconv.Itoa(page) + "&cursor=" + url.QueryEscape(cursor) + readQuery("&")
				resp, b, err := e.do(cmd.Context(), http.MethodGet, q, nil, nil)
				if err != nil {
					return err
				}
				if resp.StatusCode != http.StatusOK {
					return errorOf(resp, b)
				}
				var ans api.ScanAnswer
				if err := json.Unmarshal(b, &ans); err != nil {
					return err
				}
				for _, it := range ans.Items {
					if asJSON {
						json.NewEncoder(out).Encode(it)
					} else {
						v := it.Value
						if it.ValueBase64 != nil {
							v = fmt.Sprintf("(%d bytes, not text)", len(it.ValueBase64))
						}
						fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", it.Key, it.Version, it.VShard, v)
					}
					n++
				}
				if cursor = ans.Cursor; cursor == "" || (limit > 0 && n >= limit) {
					break
				}
			}
			if !asJSON {
				tw.Flush()
				fmt.Fprintf(out, "%d keys\n", n)
			}
			return nil
		},
	}
	get.Flags().BoolVar(&raw, "raw", false, "print the value byte for byte, without a newline (for binary values: 'kv get photo --raw > photo.jpg')")
	scan.Flags().IntVar(&limit, "limit", 0, "stop after this many keys (0: all)")
	for _, c := range []*cobra.Command{put, get, del, scan} {
		e.flags(c)
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON (one object per key for scan)")
	}
	for _, c := range []*cobra.Command{put, del} {
		c.Flags().Int64Var(&ifVersion, "if-version", -1, "write only if the key's version is this (0: only if absent)")
		c.Flags().StringVar(&idem, "idempotency-key", "", "apply at most once across retries with the same key")
	}
	for _, c := range []*cobra.Command{get, scan} {
		c.Flags().StringVar(&consistency, "consistency", "linearizable", "linearizable or stale")
		c.Flags().DurationVar(&staleness, "max-staleness", 2*time.Second, "with --consistency stale: the oldest state acceptable")
	}
	cmd.AddCommand(put, get, del, scan)
	return cmd
}

// maxStdinValue bounds a value read from standard input: the largest frame
// the API takes (a node's own value limit, 1 MiB by default, is checked by
// the node and answered as too_large).
const maxStdinValue = 64 << 20

// readValue reads a value from r, refusing one over maxStdinValue before
// holding more than that in memory.
func readValue(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStdinValue+1))
	if err != nil {
		return nil, fmt.Errorf("read the value from standard input: %w", err)
	}
	if len(b) > maxStdinValue {
		return nil, fmt.Errorf("the value on standard input is over %d MiB", maxStdinValue>>20)
	}
	return b, nil
}
