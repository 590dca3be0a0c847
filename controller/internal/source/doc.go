// Package source feeds Kubernetes objects into the model: Store is the one object cache both
// sources write to, Folder reads them from a directory of YAML files (the local lab), and Kube
// watches them with client-go informers.
//
// Store applies each object to the model.Index at once (which only marks what it affects),
// then, once no object has arrived for the debounce interval (20 ms, at most 100 ms after the
// first), commits the Index and wakes its subscribers. An invalid object is logged once with
// its kind, namespace, name and field; its last good version stays in force.
//
// Folder polls instead of using inotify (fsnotify is not among our dependencies): every 500 ms
// it compares each file's modification time and size, and re-reads and hashes a file whose
// stat changed; a changed hash re-decodes it. That is cheap for the tens of files a lab uses
// and it also works on filesystems without inotify.
package source
