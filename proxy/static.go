package proxy

import (
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
)

// newStatic returns the file server of a static route: files below
// r.Static.Root, index.html for directories, byte ranges, no directory
// listings. With strip_prefix the route prefix is removed from the path
// before it is looked up.
func newStatic(r *routes.Route) fasthttp.RequestHandler {
	fs := &fasthttp.FS{
		Root:            r.Static.Root,
		IndexNames:      []string{"index.html"},
		AcceptByteRange: true,
		PathNotFound: func(ctx *fasthttp.RequestCtx) {
			plainError(ctx, fasthttp.StatusNotFound, "not found")
		},
	}
	if r.StripPrefix && r.PathPrefix != "" {
		fs.PathRewrite = fasthttp.NewPathPrefixStripper(len(strings.TrimSuffix(r.PathPrefix, "/")))
	}
	return fs.NewRequestHandler()
}
