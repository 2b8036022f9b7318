package api_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// TestAPIOverTLSWithTheNodeCertificate: an API endpoint that is not on
// loopback serves TLS with the node's certificate; a client that trusts the
// cluster CA (ca.crt from any node's dir) talks to it, one that does not is
// refused.
func TestAPIOverTLSWithTheNodeCertificate(t *testing.T) {
	c := apitest.Start(t, 1, 20*time.Millisecond)
	node := c.Node(0)
	ep, err := api.Listen(api.Config{Addr: apitest.FreeTCP(t), TLS: node.APITLS()}, node)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	ca, err := pki.LoadCA(server.TLSDir(node.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	resp, err := hc.Get("https://" + ep.Addr().String() + "/livez")
	if err != nil {
		t.Fatalf("a client trusting the cluster CA: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok\n" || resp.TLS == nil {
		t.Fatalf("livez over TLS: %d %q", resp.StatusCode, b)
	}
	plain := &http.Transport{}
	defer plain.CloseIdleConnections()
	if _, err := (&http.Client{Transport: plain}).Get("https://" + ep.Addr().String() + "/livez"); err == nil {
		t.Fatal("a client without the cluster CA was served")
	}
	resp, err = (&http.Client{Transport: plain}).Get("http://" + ep.Addr().String() + "/livez")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP was served on the TLS port")
		}
	}
}
