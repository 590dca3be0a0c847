package identity

// VerifyPeerAt lets the external tests verify at a fake clock's time.
var VerifyPeerAt = verifyPeerAt
