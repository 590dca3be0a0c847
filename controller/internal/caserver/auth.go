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

// Authenticator maps a caller's bearer token to the name of the node the caller runs on.
// An error wrapping ErrUnauthenticated refuses the caller; any other error is treated as
// temporary (UNAVAILABLE).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (node string, err error)
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

// Authenticate authenticates the incoming call with a: the node the caller runs on.
func Authenticate(ctx context.Context, a Authenticator) (string, error) {
	token, err := BearerToken(ctx)
	if err != nil {
		return "", err
	}
	node, err := a.Authenticate(ctx, token)
	if err != nil {
		return "", err
	}
	if node == "" {
		return "", fmt.Errorf("%w: token names no node", ErrUnauthenticated)
	}
	return node, nil
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
func (d *TokenDir) Authenticate(_ context.Context, token string) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%w: empty token", ErrUnauthenticated)
	}
	tokens, err := d.load()
	if err != nil {
		return "", err
	}
	found := ""
	for want, node := range tokens {
		if subtle.ConstantTimeCompare([]byte(want), []byte(token)) == 1 {
			found = node
		}
	}
	if found == "" {
		return "", fmt.Errorf("%w: unknown node token", ErrUnauthenticated)
	}
	return found, nil
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
