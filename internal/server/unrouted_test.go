package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestUnroutedAnswersJSON checks the answers to requests no route takes:
// 405 with the methods the path does take, 404 otherwise, both in the API's
// error shape with code invalid_argument (never not_found, which clients
// read as "no such key"); an empty key is a 400; routed requests are left
// alone.
func TestUnroutedAnswersJSON(t *testing.T) {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }
	mux.HandleFunc("PUT /v1/kv/{key}", ok)
	mux.HandleFunc("GET /v1/kv/{key}", ok)
	mux.HandleFunc("POST /v1/things", ok)
	HandleEmptyKey(mux)
	HandleUnrouted(mux)
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/v1/kv/a", http.StatusTeapot, ""},
		{"HEAD", "/v1/kv/a", http.StatusTeapot, ""},
		{"POST", "/v1/things", http.StatusTeapot, ""},
		{"DELETE", "/v1/kv/a", http.StatusMethodNotAllowed, "GET, HEAD, PUT"},
		{"GET", "/v1/things", http.StatusMethodNotAllowed, "POST"},
		{"GET", "/v1/other", http.StatusNotFound, ""},
		{"GET", "/", http.StatusNotFound, ""},
		{"PUT", "/v1/kv/", http.StatusBadRequest, ""},
		{"GET", "/v1/kv/", http.StatusBadRequest, ""},
	} {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, nil))
		if w.Code != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, w.Code, tc.status)
			continue
		}
		if got := w.Header().Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
		if tc.status == http.StatusTeapot {
			continue
		}
		var body struct{ Code, Message string }
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: body %q (%s): %v", tc.method, tc.path, w.Body, w.Header().Get("Content-Type"), err)
			continue
		}
		if body.Code != CodeInvalidArgument || body.Message == "" {
			t.Errorf("%s %s: %+v", tc.method, tc.path, body)
		}
	}
}
