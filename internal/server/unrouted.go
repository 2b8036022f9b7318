package server

import (
	"fmt"
	"net/http"
	"strings"
)

// probedMethods are the methods HandleUnrouted tries when it looks for the
// ones a path does take.
var probedMethods = []string{http.MethodDelete, http.MethodGet, http.MethodHead, http.MethodPatch, http.MethodPost, http.MethodPut}

// HandleUnrouted registers on mux the answer to every request no other route
// of mux takes, in the API's JSON error shape instead of net/http's plain
// text: 405 with an Allow header when the path is served with other methods,
// 404 otherwise. Both carry code invalid_argument, never not_found: a client
// must not read "no such route" (an old server, a typo in a path) as "no
// such key".
//
// It takes the pattern "/", so mux must not have one of its own.
func HandleUnrouted(mux *http.ServeMux) {
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var allowed []string
		for _, m := range probedMethods {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeError(w, http.StatusMethodNotAllowed, CodeInvalidArgument,
				fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
			return
		}
		writeError(w, http.StatusNotFound, CodeInvalidArgument,
			fmt.Sprintf("no route for %s %s (routes: docs/api.md)", r.Method, r.URL.Path))
	})
}

// HandleEmptyKey registers on mux the answer to /v1/kv/ with no key, which
// the key routes ("/v1/kv/{key}") do not take: 400 invalid_argument, as the
// Go client and the Connect service answer an empty key.
func HandleEmptyKey(mux *http.ServeMux) {
	mux.HandleFunc("/v1/kv/{$}", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, "empty key")
	})
}
