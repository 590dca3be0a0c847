package capture

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST from linux/netfilter_ipv4.h (and IP6T_SO_ORIGINAL_DST).
const soOriginalDst = 80

// OriginalDst returns the destination a redirected connection was addressed to before the
// REDIRECT rule sent it to our listener.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		dst  netip.AddrPort
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
		if local.Is4() || local.Is4In6() {
			var sa unix.RawSockaddrInet4
			size := uint32(unsafe.Sizeof(sa))
			serr = getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &size)
			if serr == nil {
				port := uint16(sa.Port>>8 | sa.Port<<8)
				dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			}
			return
		}
		var sa unix.RawSockaddrInet6
		size := uint32(unsafe.Sizeof(sa))
		serr = getsockopt(fd, unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &size)
		if serr == nil {
			port := uint16(sa.Port>>8 | sa.Port<<8)
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return netip.AddrPort{}, fmt.Errorf("original destination: connection was not redirected: %w", err)
		}
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
}

func getsockopt(fd uintptr, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if e != 0 {
		return e
	}
	return nil
}
