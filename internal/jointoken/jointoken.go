// Package jointoken implements the tokens that let a new node join a
// cluster, in the style of kubeadm's bootstrap tokens.
//
// A token has three parts:
//
//   - an ID, 6 characters of [a-z0-9]: public, it names the token (to list
//     or revoke it, and for the cluster to find its record);
//   - a secret, 16 characters of [a-z0-9] from crypto/rand (about 82 bits):
//     it proves the joiner was given the token. The cluster stores only
//     SecretHash, never the secret;
//   - the hash of the cluster CA's public key, as pki.CA.PublicKeyHash
//     gives it ("sha256:<64 hex>"): it lets the joiner check that the
//     cluster it reached is the one that issued the token before it sends
//     the secret.
//
// Its text form is one word, safe to paste into a shell unquoted:
//
//	<id>.<secret>.<64 lowercase hex digits of the CA public key hash>
//
// for example abcdef.0123456789abcdef.<64 hex>, 88 characters in all (the
// "sha256:" prefix of the hash is implied).
//
// The secret is a credential. String returns it (that is the point of the
// text form); every other rendering (errors, %#v, log/slog) leaves it out.
package jointoken

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nodedb/nodedb-cluster/internal/pki"
)

// Lengths of a token's parts and of its text form.
const (
	IDLen     = 6
	SecretLen = 16
	hashHex   = 2 * sha256.Size
	// Len is the length of a token's text form.
	Len = IDLen + 1 + SecretLen + 1 + hashHex
)

// ErrMalformed is returned (wrapped with which part is wrong, never with
// the token's text) by Parse for a string that is not a token, and by New
// for a CA hash that is not "sha256:<64 hex>".
var ErrMalformed = errors.New("jointoken: malformed join token")

// Token is a join token. The zero value is not a valid token.
type Token struct {
	id     string
	secret string
	caHash string // "sha256:<64 lowercase hex>"
}

// New returns a new token with a random ID and secret for the cluster whose
// CA has the public key hash caHash (pki.CA.PublicKeyHash).
func New(caHash string) (Token, error) {
	sum, err := pki.ParsePublicKeyHash(caHash)
	if err != nil {
		return Token{}, fmt.Errorf("%w: CA hash %q is not sha256:<64 hex digits>", ErrMalformed, caHash)
	}
	id, err := random(IDLen)
	if err != nil {
		return Token{}, err
	}
	secret, err := random(SecretLen)
	if err != nil {
		return Token{}, err
	}
	return Token{id: id, secret: secret, caHash: pki.PublicKeyHashPrefix + hex.EncodeToString(sum[:])}, nil
}

const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// random returns n characters of alphabet, uniformly distributed.
func random(n int) (string, error) {
	out := make([]byte, 0, n)
	var buf [32]byte
	for len(out) < n {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("jointoken: random: %w", err)
		}
		for _, b := range buf {
			// 252 = 7*36: rejecting larger bytes keeps the draw uniform.
			if b < 252 && len(out) < n {
				out = append(out, alphabet[b%36])
			}
		}
	}
	return string(out), nil
}

// Parse parses a token's text form, strictly: exactly Len characters, the
// ID and secret in [a-z0-9], the hash in lowercase hex, separated by dots.
// Errors wrap ErrMalformed and never contain s.
func Parse(s string) (Token, error) {
	if len(s) != Len {
		return Token{}, fmt.Errorf("%w: want <id>.<secret>.<ca hash>, %d characters, got %d", ErrMalformed, Len, len(s))
	}
	id, secret, hash := s[:IDLen], s[IDLen+1:IDLen+1+SecretLen], s[IDLen+1+SecretLen+1:]
	if s[IDLen] != '.' || s[IDLen+1+SecretLen] != '.' {
		return Token{}, fmt.Errorf("%w: want <id>.<secret>.<ca hash>, parts of %d, %d and %d characters separated by dots", ErrMalformed, IDLen, SecretLen, hashHex)
	}
	if !ValidID(id) {
		return Token{}, fmt.Errorf("%w: the token ID must be %d characters of a-z and 0-9", ErrMalformed, IDLen)
	}
	if !inAlphabet(secret) {
		return Token{}, fmt.Errorf("%w: the secret must be %d characters of a-z and 0-9", ErrMalformed, SecretLen)
	}
	for i := 0; i < len(hash); i++ {
		if c := hash[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return Token{}, fmt.Errorf("%w: the CA hash must be %d lowercase hex digits", ErrMalformed, hashHex)
		}
	}
	return Token{id: id, secret: secret, caHash: pki.PublicKeyHashPrefix + hash}, nil
}

// ValidID reports whether id is a well-formed token ID.
func ValidID(id string) bool { return len(id) == IDLen && inAlphabet(id) }

func inAlphabet(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// ID returns the token's public ID.
func (t Token) ID() string { return t.id }

// Secret returns the token's secret. The joiner sends it, once, over a
// connection it verified against CAHash; nothing else should use it.
func (t Token) Secret() string { return t.secret }

// CAHash returns the public key hash of the cluster CA, "sha256:<64 hex>",
// the argument of quicnet.Join and pki.VerifyPinned.
func (t Token) CAHash() string { return t.caHash }

// SecretHash returns the SHA-256 of the secret: what the cluster stores to
// check the token later (with CheckSecret) without keeping the secret.
func (t Token) SecretHash() []byte {
	sum := sha256.Sum256([]byte(t.secret))
	return sum[:]
}

// CheckSecret reports, in constant time, whether t's secret is the one whose
// SecretHash is hash. A zero Token matches nothing.
func (t Token) CheckSecret(hash []byte) bool {
	if t.secret == "" {
		return false
	}
	return subtle.ConstantTimeCompare(t.SecretHash(), hash) == 1
}

// IsZero reports whether t is the zero Token.
func (t Token) IsZero() bool { return t == Token{} }

// String returns the token's text form, secret included: print it only to
// the operator who asked for the token. The zero Token prints as "".
func (t Token) String() string {
	if t.IsZero() {
		return ""
	}
	return t.id + "." + t.secret + "." + t.caHash[len(pki.PublicKeyHashPrefix):]
}

// Redacted returns the token with its secret replaced by asterisks, for logs
// and messages.
func (t Token) Redacted() string {
	if t.IsZero() {
		return ""
	}
	return t.id + ".****************." + t.caHash[len(pki.PublicKeyHashPrefix):]
}

// GoString (%#v) is redacted, so a debug print of a structure holding a
// token does not leak the secret.
func (t Token) GoString() string { return "jointoken.Token(" + t.Redacted() + ")" }

// LogValue makes log/slog print the token redacted.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.Redacted()) }
