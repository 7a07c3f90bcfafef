"""Label names, in the spelling of each dataset's publisher."""

# NIH ChestX-ray14, in the order of Wang et al. 2017 / the NIH release notes.
NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"

# The eight classes of BBox_List_2017.csv, mapped to the labels file's spelling ("Infiltrate" -> "Infiltration").
NIH_BOX_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
NIH_BOX_SPELLING = {"Infiltrate": "Infiltration"}

# Approximate prevalence of each label among the 112,120 NIH images (NIH release; "No Finding" is 53.8%).
NIH_PREVALENCE = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.002,
}

# RSNA Pneumonia Detection Challenge: stage_2_detailed_class_info.csv classes and the binary target.
RSNA_CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
RSNA_TARGETS = ("No pneumonia", "Lung Opacity")

# Pediatric pneumonia folders (Kermany et al. 2018): chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}.
PEDIATRIC_CLASSES = ("NORMAL", "PNEUMONIA")

# Lung-PET-CT-Dx annotation classes: the XML <name> letters and the histology they stand for.
LUNG_CT_CLASSES = {"A": "Adenocarcinoma", "B": "Small Cell Carcinoma", "E": "Large Cell Carcinoma", "G": "Squamous Cell Carcinoma"}
