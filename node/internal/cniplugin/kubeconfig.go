package cniplugin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// Kubeconfig is the part of a kubeconfig file the plugin reads: the first cluster's server and
// CA, the first user's token. The node agent writes it (WriteKubeconfig) with its own
// ServiceAccount's token, as istio-cni does; the plugin has no credentials of its own.
type Kubeconfig struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

type namedCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server                   string `json:"server"`
		CertificateAuthorityData string `json:"certificate-authority-data,omitempty"`
	} `json:"cluster"`
}

type namedUser struct {
	Name string `json:"name"`
	User struct {
		Token string `json:"token,omitempty"`
	} `json:"user"`
}

type namedContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	} `json:"context"`
}

// NewKubeconfig is a kubeconfig for server, trusting caPEM, authenticating with token.
func NewKubeconfig(server string, caPEM []byte, token string) Kubeconfig {
	k := Kubeconfig{APIVersion: "v1", Kind: "Config", CurrentContext: "ambit-cni"}
	var c namedCluster
	c.Name = "local"
	c.Cluster.Server = server
	c.Cluster.CertificateAuthorityData = base64.StdEncoding.EncodeToString(caPEM)
	var u namedUser
	u.Name = "ambit-cni"
	u.User.Token = token
	var x namedContext
	x.Name = "ambit-cni"
	x.Context.Cluster, x.Context.User = "local", "ambit-cni"
	k.Clusters, k.Users, k.Contexts = []namedCluster{c}, []namedUser{u}, []namedContext{x}
	return k
}

// Marshal renders the kubeconfig as YAML.
func (k Kubeconfig) Marshal() ([]byte, error) { return yaml.Marshal(k) }

// LoadKubeconfig reads a kubeconfig file.
func LoadKubeconfig(path string) (Kubeconfig, error) {
	var k Kubeconfig
	b, err := os.ReadFile(path)
	if err != nil {
		return k, fmt.Errorf("kubeconfig: %w", err)
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		return k, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if len(k.Clusters) == 0 || k.Clusters[0].Cluster.Server == "" {
		return k, fmt.Errorf("kubeconfig %s: no cluster server", path)
	}
	return k, nil
}

// kubeClient GETs objects from the API server of a Kubeconfig.
type kubeClient struct {
	server string
	token  string
	http   *http.Client
}

func newKubeClient(k Kubeconfig) (*kubeClient, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca := k.Clusters[0].Cluster.CertificateAuthorityData; ca != "" {
		pem, err := base64.StdEncoding.DecodeString(ca)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: certificate-authority-data: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("kubeconfig: certificate-authority-data holds no certificate")
		}
		tlsConf.RootCAs = pool
	}
	c := &kubeClient{server: k.Clusters[0].Cluster.Server, http: &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConf},
	}}
	if len(k.Users) > 0 {
		c.token = k.Users[0].User.Token
	}
	return c, nil
}

// objectMeta is what the plugin reads of a Namespace or Pod.
type object struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
		UID    string            `json:"uid"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork        bool   `json:"hostNetwork"`
		ServiceAccountName string `json:"serviceAccountName"`
	} `json:"spec"`
}

func (c *kubeClient) get(ctx context.Context, path string) (object, error) {
	var o object
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path, nil)
	if err != nil {
		return o, err
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return o, fmt.Errorf("kubernetes api: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return o, fmt.Errorf("kubernetes api: GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return o, fmt.Errorf("kubernetes api: GET %s: %s", path, resp.Status)
	}
	if err := json.Unmarshal(body, &o); err != nil {
		return o, fmt.Errorf("kubernetes api: GET %s: %w", path, err)
	}
	return o, nil
}

func (c *kubeClient) namespace(ctx context.Context, ns string) (object, error) {
	return c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(ns))
}

func (c *kubeClient) pod(ctx context.Context, ns, name string) (object, error) {
	return c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(ns)+"/pods/"+url.PathEscape(name))
}
