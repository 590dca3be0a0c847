package caserver

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/metadata"
)

// ErrUnauthenticated is wrapped by every Authenticator error that means the token is bad
// (missing, unknown, forged, expired), as opposed to the authenticator being unable to decide
// right now.
var ErrUnauthenticated = errors.New("unauthenticated")

// Authenticator maps a caller's bearer token to who is calling: the node it runs on and, for
// a caller that acts only for itself, its ServiceAccount. An error wrapping ErrUnauthenticated
// refuses the caller; any other error is treated as temporary (UNAVAILABLE).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// Caller is who a token authenticated.
type Caller struct {
	// Node the caller runs on.
	Node string
	// Namespace and ServiceAccount are set for a caller that may hold its own identity only:
	// a waypoint authenticated with its pod's ServiceAccount token. They are empty for a node
	// proxy (ztunnel, or a lab waypoint with its node's token), which may hold the identity of
	// any pod on its node.
	Namespace, ServiceAccount string
}

// Restricted reports whether the caller may hold its own identity only.
func (c Caller) Restricted() bool { return c.ServiceAccount != "" }

// String names the caller in logs and errors.
func (c Caller) String() string {
	if c.Restricted() {
		return "serviceaccount " + c.Namespace + "/" + c.ServiceAccount + " on node " + c.Node
	}
	return "node " + c.Node
}

// BearerToken returns the token of the incoming call's "authorization: Bearer <token>"
// metadata, or an error wrapping ErrUnauthenticated.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", fmt.Errorf("%w: want one authorization header, got %d", ErrUnauthenticated, len(vals))
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return "", fmt.Errorf("%w: authorization is not a bearer token", ErrUnauthenticated)
	}
	return strings.TrimSpace(token), nil
}

// Authenticate authenticates the incoming call with a.
func Authenticate(ctx context.Context, a Authenticator) (Caller, error) {
	token, err := BearerToken(ctx)
	if err != nil {
		return Caller{}, err
	}
	c, err := a.Authenticate(ctx, token)
	if err != nil {
		return Caller{}, err
	}
	if c.Node == "" {
		return Caller{}, fmt.Errorf("%w: token names no node", ErrUnauthenticated)
	}
	return c, nil
}

// TokenDir is the local-mode Authenticator: a folder with one file per node, named after the
// node and holding its token. The folder is re-read at most once per TokenDirRefresh, so
// adding or rotating a node's token needs no restart, and a hundred proxies connecting at
// once cost one read of the folder. Use it by pointer; the zero cache is ready.
type TokenDir struct {
	Dir string

	mu     sync.Mutex
	read   time.Time
	tokens map[string]string // token → node
}

// TokenDirRefresh bounds how stale TokenDir's view of the folder may be.
const TokenDirRefresh = time.Second

// Authenticate returns the node whose file holds token. Tokens are compared in constant time.
func (d *TokenDir) Authenticate(_ context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, fmt.Errorf("%w: empty token", ErrUnauthenticated)
	}
	tokens, err := d.load()
	if err != nil {
		return Caller{}, err
	}
	found := ""
	for want, node := range tokens {
		if subtle.ConstantTimeCompare([]byte(want), []byte(token)) == 1 {
			found = node
		}
	}
	if found == "" {
		return Caller{}, fmt.Errorf("%w: unknown node token", ErrUnauthenticated)
	}
	return Caller{Node: found}, nil
}

func (d *TokenDir) load() (map[string]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tokens != nil && time.Since(d.read) < TokenDirRefresh {
		return d.tokens, nil
	}
	entries, err := os.ReadDir(d.Dir)
	if err != nil {
		return nil, fmt.Errorf("node tokens: %w", err)
	}
	tokens := make(map[string]string, len(entries))
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d.Dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("node tokens: %w", err)
		}
		if t := strings.TrimSpace(string(b)); t != "" {
			tokens[t] = e.Name()
		}
	}
	d.tokens, d.read = tokens, time.Now()
	return tokens, nil
}

// EnsureNodeTokens creates dir (0700) and, for each node without one, a token file
// <dir>/<node> (0600) holding 32 random bytes in base64url. Existing files are left alone.
func EnsureNodeTokens(dir string, nodes ...string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("node tokens: %w", err)
	}
	for _, n := range nodes {
		if n == "" || n == "." || n == ".." || strings.ContainsAny(n, `/\`) || strings.HasPrefix(n, ".") {
			return fmt.Errorf("node tokens: invalid node name %q", n)
		}
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("node tokens: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(dir, n), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("node tokens: %w", err)
		}
		_, werr := f.WriteString(base64.RawURLEncoding.EncodeToString(b[:]) + "\n")
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return fmt.Errorf("node tokens: write %s: %w", n, err)
		}
	}
	return nil
}
