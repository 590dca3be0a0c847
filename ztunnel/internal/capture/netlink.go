package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// What ztunnel reads from a pod's namespace over netlink, in-process: the nf_tables ruleset
// generation (every change to any table of the namespace, iptables-nft's included, moves
// it), ambit's policy rule and its local route. Each is one request on a socket made on the
// caller's thread, so the caller runs them inside the pod's namespace (InNetns). Before
// these, the periodic check ran four programs per pod (nsenter with iptables-save twice,
// `ip rule` and `ip route`): about 31 ms of CPU per pod per check (docs/benchmarks.md).

// nftGeneration returns the nf_tables ruleset generation of the caller's namespace
// (NFT_MSG_GETGEN, what `nft list ruleset` prints as its first comment).
func nftGeneration() (uint32, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	const typ = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN
	req := make([]byte, unix.NLMSG_HDRLEN+sizeofNfgenmsg)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:], 1) // sequence
	req[16] = unix.AF_UNSPEC
	req[17] = unix.NFNETLINK_V0
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("ask for the nf_tables generation: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("read the nf_tables generation: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("parse the nf_tables generation: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.NLMSG_ERROR:
			return 0, fmt.Errorf("ask for the nf_tables generation: %w", netlinkErr(m.Data))
		case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN:
			if len(m.Data) < sizeofNfgenmsg {
				break
			}
			for a := range attrs(m.Data[sizeofNfgenmsg:]) {
				if a.typ == unix.NFTA_GEN_ID && len(a.val) == 4 {
					return binary.BigEndian.Uint32(a.val), nil
				}
			}
		}
	}
	return 0, errors.New("no nf_tables generation in the kernel's answer")
}

// policyRulePresent reports whether the caller's namespace has ambit's policy rule:
// fwmark ConnMark/0xfff, preference RulePref, lookup RouteTable.
func policyRulePresent() (bool, error) {
	msgs, err := dump(unix.RTM_GETRULE)
	if err != nil {
		return false, fmt.Errorf("list policy rules: %w", err)
	}
	const hdr = 12 // struct fib_rule_hdr: eight bytes, then flags
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWRULE || len(m.Data) < hdr {
			continue
		}
		table := uint32(m.Data[4])
		var prio, mark, mask uint32
		for a := range attrs(m.Data[hdr:]) {
			if len(a.val) != 4 {
				continue
			}
			v := binary.NativeEndian.Uint32(a.val)
			switch a.typ {
			case unix.FRA_PRIORITY:
				prio = v
			case unix.FRA_FWMARK:
				mark = v
			case unix.FRA_FWMASK:
				mask = v
			case unix.FRA_TABLE:
				table = v
			}
		}
		if m.Data[7] == unix.FR_ACT_TO_TBL && prio == RulePref && mark == ConnMark && mask == 0xfff && table == RouteTable {
			return true, nil
		}
	}
	return false, nil
}

// localRoutePresent reports whether the caller's namespace has ambit's route: local
// 0.0.0.0/0 dev lo in RouteTable.
func localRoutePresent() (bool, error) {
	lo, err := loopbackIndex()
	if err != nil {
		return false, err
	}
	msgs, err := dump(unix.RTM_GETROUTE)
	if err != nil {
		return false, fmt.Errorf("list routes: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWROUTE || len(m.Data) < unix.SizeofRtMsg {
			continue
		}
		table, oif := uint32(m.Data[4]), uint32(0)
		for a := range attrs(m.Data[unix.SizeofRtMsg:]) {
			if len(a.val) != 4 {
				continue
			}
			switch a.typ {
			case unix.RTA_TABLE:
				table = binary.NativeEndian.Uint32(a.val)
			case unix.RTA_OIF:
				oif = binary.NativeEndian.Uint32(a.val)
			}
		}
		dstLen, typ := m.Data[1], m.Data[7]
		if table == RouteTable && typ == unix.RTN_LOCAL && dstLen == 0 && oif == lo {
			return true, nil
		}
	}
	return false, nil
}

// loopbackIndex is the interface index of lo in the caller's namespace.
func loopbackIndex() (uint32, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket for interface lookup: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("index of lo: %w", err)
	}
	return ifr.Uint32(), nil
}

// dump lists the caller's namespace's IPv4 objects of one routing netlink type.
func dump(typ int) ([]syscall.NetlinkMessage, error) {
	b, err := syscall.NetlinkRIB(typ, unix.AF_INET)
	if err != nil {
		return nil, err
	}
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR {
			return nil, netlinkErr(m.Data)
		}
	}
	return msgs, nil
}

// netlinkErr is the error an NLMSG_ERROR message carries.
func netlinkErr(data []byte) error {
	if len(data) < 4 {
		return errors.New("short netlink error message")
	}
	if code := int32(binary.NativeEndian.Uint32(data)); code < 0 {
		return syscall.Errno(-code)
	}
	return errors.New("netlink acknowledgement where an answer was expected")
}

const (
	sizeofNfgenmsg = 4      // struct nfgenmsg: family, version, resource id
	nlaTypeMask    = 0x3fff // an attribute's type without the nested and byte-order flags
)

type attr struct {
	typ uint16
	val []byte
}

// attrs yields the netlink attributes in b; a truncated one ends the list.
func attrs(b []byte) func(func(attr) bool) {
	return func(yield func(attr) bool) {
		for len(b) >= unix.SizeofNlAttr {
			l := int(binary.NativeEndian.Uint16(b))
			if l < unix.SizeofNlAttr || l > len(b) {
				return
			}
			if !yield(attr{typ: binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask, val: b[unix.SizeofNlAttr:l]}) {
				return
			}
			next := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
			if next >= len(b) {
				return
			}
			b = b[next:]
		}
	}
}
