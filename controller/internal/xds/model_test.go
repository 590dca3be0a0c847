package xds

import "ambit.dev/controller/internal/model"

// The model's Index plugs in with a one-line adapter and no copying.
var _ Generator = GeneratorFunc(func(p Proxy) map[string]map[string]Resource {
	return (*model.Index)(nil).For(p)
})
