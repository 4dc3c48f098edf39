# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet's kernel pair proofs from what each host's journal keeps (module_utils/proofs.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import proofs


def kernel_proofs(proofs_by_host, earlier=None, rows=None):
    if not isinstance(proofs_by_host, dict):
        raise AnsibleFilterError("kernel_proofs takes {host: proofs}, not %s" % type(proofs_by_host).__name__)
    if earlier is not None and not isinstance(earlier, dict):
        raise AnsibleFilterError("kernel_proofs: earlier is a view this filter returned (guestmemfs_kernel_proofs), "
                                 "not %s" % type(earlier).__name__)
    hosts = dict((h, p if isinstance(p, dict) else {}) for h, p in proofs_by_host.items())
    return proofs.merge(earlier or {}, proofs.fleet(hosts), proofs.fleet(proofs.of_rows(rows)))


class FilterModule(object):
    def filters(self):
        return {"kernel_proofs": kernel_proofs}
