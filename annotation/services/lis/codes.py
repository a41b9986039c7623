"""The one table of codes the LIS messages use: LOINC for the differential, UCUM units,
and the portal's own code system for what LOINC has no code for.

LOINC: the codes are the "/100 leukocytes in Blood" terms (method not specified) that
make up LOINC panel 24318-8 "Manual differential panel - Blood". Checked against the
panel's member list as published in the CIBMTR Reporting FHIR IG
(nmdp-ig/cibmtr-reporting-ig, ValueSet manual-differential-blood-vs, "Manual Differential
panel - Blood (24318-8)") and, for several, against a laboratory's ORU^R01 messages;
https://loinc.org/24318-8 is the reference to check them against before going live. The
"by Manual count" variants (e.g. 737-7 Lymphocytes/100 leukocytes by Manual count) exist
too, but not for every class here, so one consistent family is used.

What is NOT here, on purpose:
- AR (artifact / not reportable): not a cell class of the differential, never reported.
- The "[#/volume] in Blood" LOINC terms (e.g. 26499-4 Neutrophils [#/volume]): they are
  concentrations (cells per litre), which need the analyser's leukocyte count; the portal
  counts cells on a smear and knows no concentration. The number of cells of a class
  counted is sent as a component with the portal's own code (COUNTED), never under a
  concentration code.

Less certain, said so here and in docs/lis.md:
- LR (reactive lymphocyte) -> 13046-8 "Variant lymphocytes/100 leukocytes": LOINC's
  "variant" lymphocyte is the reactive/atypical lymphocyte of ICSH/CLSI H20; a lab that
  files reactive lymphocytes elsewhere should change this row.
- LA (abnormal, malignant lymphocyte) -> 30413-9 "Abnormal lymphocytes/100 leukocytes".
- NRBC per 100 WBC -> 19048-8 ("nRBC/100 WBC Bld-Rto"): taken from a laboratory's ORU
  messages and the LOINC short name there, not from the 24318-8 member list.
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
# The portal's own code systems (absolute URIs, as FHIR requires; not resolvable).
PORTAL_CLASS_SYSTEM = "urn:wbcportal:14-diff"  # the 14-Diff codes (mlworker/taxonomy.py)
PORTAL_CODE_SYSTEM = "urn:wbcportal:code"  # counted cells, flags
PORTAL_IDENTIFIER = "urn:wbcportal:id"  # report, observation and delivery identifiers
PORTAL_PATIENT = "urn:wbcportal:patient-pseudonym"
PORTAL_ACCESSION = "urn:wbcportal:accession"

# The differential panel: LOINC 24318-8.
PANEL = ("24318-8", "Manual differential panel - Blood")
# The number of white cells counted for the differential, and of one class: portal codes.
TOTAL_COUNTED = ("wbc-counted", "White cells counted in the differential")
COUNTED = ("cells-counted", "Cells of this class counted")
NRBC_PER_100_WBC = ("19048-8", "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood")


@dataclass(frozen=True)
class LoincTerm:
    code: str
    display: str


# 14-Diff code -> the LOINC term of its percentage among the counted white cells.
PERCENT_LOINC: dict[str, LoincTerm] = {
    "NE": LoincTerm("26511-6", "Neutrophils/100 leukocytes in Blood"),
    "LY": LoincTerm("26478-8", "Lymphocytes/100 leukocytes in Blood"),
    "MO": LoincTerm("26485-3", "Monocytes/100 leukocytes in Blood"),
    "EO": LoincTerm("26450-7", "Eosinophils/100 leukocytes in Blood"),
    "BA": LoincTerm("30180-4", "Basophils/100 leukocytes in Blood"),
    "ME": LoincTerm("28541-1", "Metamyelocytes/100 leukocytes in Blood"),
    "MY": LoincTerm("26498-6", "Myelocytes/100 leukocytes in Blood"),
    "PR": LoincTerm("26524-9", "Promyelocytes/100 leukocytes in Blood"),
    "LR": LoincTerm("13046-8", "Variant lymphocytes/100 leukocytes in Blood"),
    "LA": LoincTerm("30413-9", "Abnormal lymphocytes/100 leukocytes in Blood"),
    "BL": LoincTerm("26446-5", "Blasts/100 leukocytes in Blood"),
    "PC": LoincTerm("13047-6", "Plasma cells/100 leukocytes in Blood"),
}
# Classes a report may carry that have no LOINC row, and why (see above).
NOT_SENT = {
    "NR": "sent as NRBC per 100 WBC (19048-8), not as a share of the white cells",
    "AR": "artifact / not reportable: not part of the differential",
}
