package inpod

import (
	"context"
	"net"

	"ambit.dev/ztunnel/internal/capture"
	"ambit.dev/ztunnel/internal/proxy"
)

// Netns is the production Capturer: rules, listeners and dials inside each pod's network
// namespace, with ztunnel's socket mark.
type Netns struct{}

func (Netns) Install(ctx context.Context, netns string) error { return capture.Install(ctx, netns) }
func (Netns) Remove(ctx context.Context, netns string) error  { return capture.Remove(ctx, netns) }
func (Netns) Check(ctx context.Context, netns string, seen capture.Seen) (bool, capture.Seen, error) {
	return capture.Check(ctx, netns, seen)
}

func (Netns) Net(netns string) proxy.Net {
	return proxy.Net{
		Listen: func(addr string, o proxy.ListenOptions) (net.Listener, error) {
			return capture.Listen(netns, addr, o.Local)
		},
		Dial: func(ctx context.Context, addr string, o proxy.DialOptions) (*net.TCPConn, error) {
			return capture.Dial(ctx, netns, addr, capture.DialOptions{Source: o.Source, Bound: o.Bound, Local: o.Local})
		},
		OriginalDst: capture.OriginalDst,
		// HBONE over HTTP/3: the pod's UDP 15008 and its outgoing QUIC connections' sockets,
		// marked, in the pod's namespace.
		ListenPacket: func(addr string) (net.PacketConn, error) { return capture.ListenPacket(netns, addr) },
	}
}
