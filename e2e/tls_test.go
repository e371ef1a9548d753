package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kiln e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS: the server answers HTTPS and its embedded nats-server requires
// TLS; a worker process that trusts the certificate (SSL_CERT_FILE, as an
// admin would set it for a private CA) runs work over both, and clients
// that do not trust it are refused.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	b := setupWith(t, backends[0], func(c *server.Config) {
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.NATSTLSCert, c.NATSTLSKey = certFile, keyFile
	})
	require.True(t, strings.HasPrefix(b.srv.APIURL(), "https://"), b.srv.APIURL())
	require.True(t, strings.HasPrefix(b.srv.NATSURL(), "tls://"), b.srv.NATSURL())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	user := client.New(b.srv.APIURL(), b.token("alice"), client.WithHTTPClient(hc))

	w := b.startWorkerProcessEnv("tls", []string{"SSL_CERT_FILE=" + certFile})
	tok, err := os.ReadFile(filepath.Join(w.dir, "token"))
	require.NoError(t, err)
	wtok := strings.TrimSpace(string(tok))
	wr, err := user.CreateWorkRequest(b.ctx, schemas.WorkRequestCreate{TaskName: "noop", TaskData: []byte(`{}`)})
	require.NoError(t, err)
	b.waitFor("the request to complete over TLS", func() bool {
		got, err := user.GetWorkRequest(b.ctx, wr.ID)
		require.NoError(t, err)
		return got.Status == schemas.StatusCompleted
	})
	got, err := user.GetWorkRequest(b.ctx, wr.ID)
	require.NoError(t, err)
	require.Equal(t, schemas.ResultSuccess, got.Result)
	require.Equal(t, w.id, *got.Worker)

	// Plain HTTP and untrusting clients are refused.
	plain, err := http.Get(strings.Replace(b.srv.URL(), "https://", "http://", 1) + "/healthz")
	if err == nil {
		plain.Body.Close()
		require.Equal(t, http.StatusBadRequest, plain.StatusCode, "plain HTTP answered")
	}
	_, err = client.New(b.srv.APIURL(), b.token("alice")).WhoAmI(b.ctx)
	require.ErrorContains(t, err, "certificate")
	nc, err := nats.Connect(b.srv.NATSURL(), nats.Token(wtok), nats.MaxReconnects(0))
	if err == nil {
		nc.Close()
	}
	require.Error(t, err, "NATS without the certificate trusted")
	nc, err = nats.Connect(b.srv.NATSURL(), nats.Token(wtok), nats.Secure(&tls.Config{RootCAs: pool}))
	require.NoError(t, err, "NATS with it trusted")
	nc.Close()
}
