package api

import "net/http"

// mountConnect adds the Connect service (gRPC, gRPC-Web, Connect) to mux.
func mountConnect(mux *http.ServeMux, svc Service) {
	if connectHandler != nil {
		path, h := connectHandler(svc)
		mux.Handle(path, h)
	}
}

// connectHandler is ConnectHandler once the generated service is built in.
var connectHandler func(Service) (string, http.Handler)
