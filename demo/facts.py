"""Synthetic demo facts written for megatron-huatuo (CC0 / public domain dedication; no third-party text).

General textbook-level statements about common conditions, written by the project for the demo pipeline. They are
simplified and NOT medical advice. ``build_demo_data.py`` composes the demo corpora, dialogues, rewritten pairs and
questions from this table.

Each entry: (key, name_en, name_zh, {field: (en, zh)}) with fields cause, symptoms, diagnosis, treatment, prevention.
"""
from __future__ import annotations

FACTS = [
    ("hypertension", "hypertension", "高血压", {
        "cause": ("high salt intake, obesity, lack of exercise, ageing and family history", "高盐饮食、肥胖、缺乏运动、年龄增长和家族遗传"),
        "symptoms": ("often no symptoms, sometimes headache, dizziness and palpitations", "多数无明显症状，部分患者出现头痛、头晕和心悸"),
        "diagnosis": ("repeated blood pressure readings of 140/90 mmHg or higher on different days", "非同日多次测量血压均不低于140/90 mmHg"),
        "treatment": ("salt reduction, weight control and drugs such as ACE inhibitors, calcium channel blockers or thiazide diuretics", "限盐、控制体重，并使用血管紧张素转换酶抑制剂、钙通道阻滞剂或噻嗪类利尿剂等药物"),
        "prevention": ("a low-salt diet, regular exercise and limiting alcohol", "低盐饮食、规律运动和限制饮酒"),
    }),
    ("diabetes", "type 2 diabetes", "2型糖尿病", {
        "cause": ("insulin resistance combined with declining insulin secretion", "胰岛素抵抗合并胰岛素分泌逐渐减少"),
        "symptoms": ("thirst, frequent urination, increased appetite and weight loss", "口渴多饮、多尿、多食和体重下降"),
        "diagnosis": ("fasting plasma glucose of 7.0 mmol/L or higher, or HbA1c of 6.5 percent or higher", "空腹血糖不低于7.0 mmol/L，或糖化血红蛋白不低于6.5%"),
        "treatment": ("diet control, exercise and metformin as the usual first-line drug", "饮食控制、运动治疗，二甲双胍通常作为一线药物"),
        "prevention": ("keeping a healthy weight and staying physically active", "保持健康体重和积极的身体活动"),
    }),
    ("asthma", "asthma", "支气管哮喘", {
        "cause": ("chronic airway inflammation triggered by allergens, cold air or exercise", "过敏原、冷空气或运动诱发的慢性气道炎症"),
        "symptoms": ("recurrent wheezing, chest tightness, shortness of breath and cough, often at night", "反复发作的喘息、胸闷、气促和咳嗽，夜间多见"),
        "diagnosis": ("lung function tests showing reversible airflow limitation", "肺功能检查提示可逆性气流受限"),
        "treatment": ("inhaled corticosteroids for control and short-acting bronchodilators for relief", "吸入糖皮质激素控制炎症，发作时使用短效支气管扩张剂缓解"),
        "prevention": ("avoiding known triggers and using controller medicine regularly", "避免接触诱发因素并规律使用控制药物"),
    }),
    ("influenza", "influenza", "流行性感冒", {
        "cause": ("infection with influenza A or B viruses spread by droplets", "甲型或乙型流感病毒经飞沫传播引起的感染"),
        "symptoms": ("sudden high fever, muscle aches, headache, fatigue and cough", "突发高热、肌肉酸痛、头痛、乏力和咳嗽"),
        "diagnosis": ("clinical features during the flu season and a rapid antigen or nucleic acid test", "流行季节的临床表现结合抗原或核酸检测"),
        "treatment": ("rest, fluids and antiviral drugs such as oseltamivir started early", "休息、补液，并尽早使用奥司他韦等抗病毒药物"),
        "prevention": ("a yearly influenza vaccine and good hand hygiene", "每年接种流感疫苗并注意手卫生"),
    }),
    ("anemia", "iron-deficiency anaemia", "缺铁性贫血", {
        "cause": ("blood loss, poor iron intake or poor iron absorption", "慢性失血、铁摄入不足或吸收障碍"),
        "symptoms": ("tiredness, pale skin, shortness of breath on effort and brittle nails", "乏力、面色苍白、活动后气短和指甲脆裂"),
        "diagnosis": ("low haemoglobin with small red cells and low serum ferritin", "血红蛋白降低、红细胞体积偏小且血清铁蛋白降低"),
        "treatment": ("oral iron supplements and treating the source of blood loss", "口服铁剂并治疗失血的原因"),
        "prevention": ("iron-rich foods such as red meat, beans and leafy greens", "多吃红肉、豆类和深绿色蔬菜等富含铁的食物"),
    }),
    ("gerd", "gastro-oesophageal reflux disease", "胃食管反流病", {
        "cause": ("weakness of the lower oesophageal sphincter letting stomach acid flow back", "食管下括约肌功能减弱导致胃酸反流"),
        "symptoms": ("heartburn and acid regurgitation, worse after meals or lying down", "烧心和反酸，餐后或平卧时加重"),
        "diagnosis": ("typical symptoms, a trial of acid suppression and endoscopy when needed", "典型症状、抑酸治疗试验，必要时行胃镜检查"),
        "treatment": ("proton pump inhibitors such as omeprazole and lifestyle changes", "奥美拉唑等质子泵抑制剂联合生活方式调整"),
        "prevention": ("smaller meals, not eating before bed and losing excess weight", "少食多餐、睡前不进食并减轻多余体重"),
    }),
    ("pneumonia", "community-acquired pneumonia", "社区获得性肺炎", {
        "cause": ("bacteria such as Streptococcus pneumoniae or respiratory viruses", "肺炎链球菌等细菌或呼吸道病毒"),
        "symptoms": ("fever, cough with sputum, chest pain and breathlessness", "发热、咳嗽咳痰、胸痛和呼吸困难"),
        "diagnosis": ("a new shadow on the chest X-ray together with respiratory symptoms", "胸部X线出现新的浸润影并伴有呼吸道症状"),
        "treatment": ("antibiotics chosen by severity, for example amoxicillin for mild cases", "根据病情严重程度选择抗生素，轻症可用阿莫西林"),
        "prevention": ("pneumococcal and influenza vaccines and not smoking", "接种肺炎球菌疫苗和流感疫苗并戒烟"),
    }),
    ("uti", "urinary tract infection", "尿路感染", {
        "cause": ("bacteria, most often Escherichia coli, entering the urinary tract", "细菌（最常见为大肠埃希菌）进入尿路"),
        "symptoms": ("burning on urination, frequent and urgent urination and lower abdominal pain", "尿痛、尿频、尿急和下腹部疼痛"),
        "diagnosis": ("urinalysis showing white cells and a urine culture", "尿常规提示白细胞增多并行尿培养"),
        "treatment": ("a short course of antibiotics such as nitrofurantoin", "短疗程抗生素，例如呋喃妥因"),
        "prevention": ("drinking enough water and not holding urine for long", "充足饮水、避免长时间憋尿"),
    }),
    ("migraine", "migraine", "偏头痛", {
        "cause": ("a brain disorder with genetic factors, triggered by stress, sleep loss or some foods", "与遗传有关的脑功能障碍，可由压力、睡眠不足或某些食物诱发"),
        "symptoms": ("one-sided throbbing headache with nausea and sensitivity to light", "单侧搏动性头痛，伴恶心和畏光"),
        "diagnosis": ("the typical pattern of attacks and a normal neurological examination", "典型的发作特点且神经系统检查正常"),
        "treatment": ("pain relievers or triptans during attacks and preventive drugs for frequent attacks", "发作时使用止痛药或曲普坦类药物，频繁发作者加用预防性药物"),
        "prevention": ("regular sleep, meals and avoiding personal triggers", "规律作息和饮食，避免个人诱发因素"),
    }),
    ("hypothyroidism", "hypothyroidism", "甲状腺功能减退症", {
        "cause": ("autoimmune thyroiditis, thyroid surgery or iodine deficiency", "自身免疫性甲状腺炎、甲状腺手术或碘缺乏"),
        "symptoms": ("tiredness, feeling cold, weight gain, constipation and dry skin", "乏力、怕冷、体重增加、便秘和皮肤干燥"),
        "diagnosis": ("raised TSH with low free thyroxine", "促甲状腺激素升高而游离甲状腺素降低"),
        "treatment": ("daily levothyroxine with the dose adjusted by TSH", "每日口服左甲状腺素，并根据促甲状腺激素调整剂量"),
        "prevention": ("adequate iodine intake where iodine is scarce", "在缺碘地区保证足够的碘摄入"),
    }),
    ("gout", "gout", "痛风", {
        "cause": ("high uric acid forming urate crystals in the joints", "高尿酸血症导致尿酸盐结晶沉积于关节"),
        "symptoms": ("sudden severe pain, redness and swelling of a joint, often the big toe", "关节突发剧痛、红肿，常见于第一跖趾关节"),
        "diagnosis": ("urate crystals in joint fluid or a typical attack with high uric acid", "关节液中发现尿酸盐结晶，或典型发作伴血尿酸升高"),
        "treatment": ("colchicine or anti-inflammatory drugs for attacks and allopurinol to lower uric acid", "急性期使用秋水仙碱或非甾体抗炎药，长期使用别嘌醇降尿酸"),
        "prevention": ("less alcohol and purine-rich food and enough water", "减少饮酒和高嘌呤食物并多饮水"),
    }),
    ("osteoporosis", "osteoporosis", "骨质疏松症", {
        "cause": ("loss of bone mass with age, especially after menopause", "随年龄增长骨量丢失，绝经后女性尤为明显"),
        "symptoms": ("no symptoms until a fracture, loss of height and back pain", "骨折前常无症状，可出现身高变矮和腰背痛"),
        "diagnosis": ("a bone density scan with a T-score of minus 2.5 or lower", "骨密度检查T值不高于-2.5"),
        "treatment": ("calcium, vitamin D and bisphosphonates such as alendronate", "补充钙和维生素D，并使用阿仑膦酸钠等双膦酸盐"),
        "prevention": ("weight-bearing exercise, enough calcium and preventing falls", "负重运动、充足钙摄入和预防跌倒"),
    }),
    ("copd", "chronic obstructive pulmonary disease", "慢性阻塞性肺疾病", {
        "cause": ("long-term smoking or exposure to smoke and dust", "长期吸烟或暴露于烟雾和粉尘"),
        "symptoms": ("chronic cough, sputum and breathlessness that slowly gets worse", "慢性咳嗽、咳痰和逐渐加重的呼吸困难"),
        "diagnosis": ("spirometry with a post-bronchodilator FEV1/FVC below 0.70", "使用支气管扩张剂后肺功能FEV1/FVC小于0.70"),
        "treatment": ("stopping smoking, inhaled bronchodilators and pulmonary rehabilitation", "戒烟、吸入支气管扩张剂和肺康复训练"),
        "prevention": ("not smoking and reducing exposure to indoor smoke", "不吸烟并减少室内烟雾暴露"),
    }),
    ("ulcer", "peptic ulcer", "消化性溃疡", {
        "cause": ("Helicobacter pylori infection or regular use of anti-inflammatory drugs", "幽门螺杆菌感染或长期服用非甾体抗炎药"),
        "symptoms": ("burning upper abdominal pain related to meals", "与进食相关的上腹部烧灼样疼痛"),
        "diagnosis": ("endoscopy and testing for Helicobacter pylori", "胃镜检查并检测幽门螺杆菌"),
        "treatment": ("proton pump inhibitors and eradication therapy for Helicobacter pylori", "质子泵抑制剂联合根除幽门螺杆菌治疗"),
        "prevention": ("avoiding unnecessary anti-inflammatory drugs and not smoking", "避免不必要的非甾体抗炎药并戒烟"),
    }),
    ("af", "atrial fibrillation", "心房颤动", {
        "cause": ("high blood pressure, heart valve disease, ageing and thyroid overactivity", "高血压、心脏瓣膜病、年龄增长和甲状腺功能亢进"),
        "symptoms": ("palpitations, an irregular pulse, tiredness and breathlessness", "心悸、脉搏不规则、乏力和气短"),
        "diagnosis": ("an electrocardiogram showing an irregular rhythm without P waves", "心电图显示P波消失、节律绝对不齐"),
        "treatment": ("rate or rhythm control and anticoagulants to prevent stroke", "控制心室率或节律，并抗凝预防脑卒中"),
        "prevention": ("controlling blood pressure and limiting alcohol", "控制血压并限制饮酒"),
    }),
    ("eczema", "atopic dermatitis", "特应性皮炎", {
        "cause": ("a weak skin barrier and an allergic tendency, often in families", "皮肤屏障功能缺陷和过敏体质，常有家族史"),
        "symptoms": ("itchy, dry, red patches of skin, often in skin folds", "皮肤瘙痒、干燥、红斑，好发于皱褶部位"),
        "diagnosis": ("the typical appearance, itch and a personal or family history of allergy", "典型皮损、瘙痒及个人或家族过敏史"),
        "treatment": ("regular moisturisers and topical corticosteroids during flares", "坚持使用保湿剂，发作期外用糖皮质激素"),
        "prevention": ("daily skin moisturising and avoiding irritants", "每日皮肤保湿并避免刺激物"),
    }),
    ("depression", "depression", "抑郁症", {
        "cause": ("a mix of genetic, biological, psychological and social factors", "遗传、生物、心理和社会因素共同作用"),
        "symptoms": ("low mood, loss of interest, poor sleep and feelings of worthlessness for at least two weeks", "持续两周以上的情绪低落、兴趣减退、睡眠差和无价值感"),
        "diagnosis": ("a clinical interview using standard diagnostic criteria", "依据标准诊断标准进行临床评估"),
        "treatment": ("psychotherapy and antidepressants such as SSRIs", "心理治疗以及选择性5-羟色胺再摄取抑制剂等抗抑郁药"),
        "prevention": ("social support, physical activity and early help when mood drops", "社会支持、体育锻炼，情绪低落时及早求助"),
    }),
    ("tb", "pulmonary tuberculosis", "肺结核", {
        "cause": ("Mycobacterium tuberculosis spread through the air", "结核分枝杆菌经空气传播"),
        "symptoms": ("cough for more than two weeks, night sweats, weight loss and low fever", "咳嗽超过两周、盗汗、体重下降和低热"),
        "diagnosis": ("sputum testing, chest imaging and molecular tests", "痰液检查、胸部影像学和分子检测"),
        "treatment": ("several months of combined drugs such as isoniazid and rifampicin", "异烟肼、利福平等多种药物联合治疗数月"),
        "prevention": ("finding and treating cases early and BCG vaccination of infants", "早发现、早治疗，并为婴儿接种卡介苗"),
    }),
    ("hepb", "chronic hepatitis B", "慢性乙型肝炎", {
        "cause": ("hepatitis B virus passed through blood, sex or from mother to child", "乙型肝炎病毒经血液、性接触或母婴传播"),
        "symptoms": ("often none, sometimes tiredness, poor appetite and jaundice", "常无症状，部分患者有乏力、食欲减退和黄疸"),
        "diagnosis": ("a positive hepatitis B surface antigen for more than six months", "乙肝表面抗原阳性超过六个月"),
        "treatment": ("antiviral drugs such as entecavir or tenofovir when indicated", "符合指征时使用恩替卡韦或替诺福韦等抗病毒药物"),
        "prevention": ("hepatitis B vaccination, starting at birth", "接种乙肝疫苗，从出生时开始"),
    }),
    ("chd", "coronary heart disease", "冠心病", {
        "cause": ("narrowing of the coronary arteries by atherosclerosis", "冠状动脉粥样硬化导致管腔狭窄"),
        "symptoms": ("chest pain or pressure on exertion that eases with rest", "劳累时出现胸痛或胸部压迫感，休息后缓解"),
        "diagnosis": ("electrocardiogram, stress testing and coronary angiography", "心电图、负荷试验和冠状动脉造影"),
        "treatment": ("aspirin, statins, anti-anginal drugs and stents or bypass surgery when needed", "阿司匹林、他汀类药物、抗心绞痛药物，必要时行支架或搭桥手术"),
        "prevention": ("not smoking, healthy diet and control of blood pressure and cholesterol", "戒烟、健康饮食并控制血压和胆固醇"),
    }),
    ("stroke", "ischaemic stroke", "缺血性脑卒中", {
        "cause": ("a blood clot blocking an artery that supplies the brain", "血栓阻塞供应脑部的动脉"),
        "symptoms": ("sudden weakness of one side, facial droop and slurred speech", "突发一侧肢体无力、口角歪斜和言语不清"),
        "diagnosis": ("urgent brain CT or MRI to exclude bleeding", "紧急头颅CT或磁共振检查以排除出血"),
        "treatment": ("clot-dissolving treatment or thrombectomy within the time window", "在时间窗内进行溶栓或取栓治疗"),
        "prevention": ("controlling blood pressure, atrial fibrillation and cholesterol", "控制血压、心房颤动和胆固醇"),
    }),
    ("ckd", "chronic kidney disease", "慢性肾脏病", {
        "cause": ("diabetes, high blood pressure and glomerular diseases", "糖尿病、高血压和肾小球疾病"),
        "symptoms": ("usually none early, later swelling, tiredness and foamy urine", "早期多无症状，后期出现水肿、乏力和泡沫尿"),
        "diagnosis": ("reduced eGFR or protein in the urine for more than three months", "估算肾小球滤过率下降或蛋白尿持续超过三个月"),
        "treatment": ("controlling blood pressure and glucose and using ACE inhibitors for proteinuria", "控制血压和血糖，蛋白尿患者使用血管紧张素转换酶抑制剂"),
        "prevention": ("good control of diabetes and blood pressure and avoiding kidney-toxic drugs", "良好控制糖尿病和血压，避免肾毒性药物"),
    }),
    ("hfmd", "hand, foot and mouth disease", "手足口病", {
        "cause": ("enteroviruses such as coxsackievirus A16 and enterovirus 71", "柯萨奇病毒A16型和肠道病毒71型等肠道病毒"),
        "symptoms": ("fever, mouth sores and a rash on the hands and feet in young children", "幼儿发热、口腔疱疹以及手足部皮疹"),
        "diagnosis": ("the typical rash and mouth sores during an outbreak", "流行期间典型的皮疹和口腔疱疹"),
        "treatment": ("supportive care with fluids and fever control, watching for danger signs", "对症支持治疗，补液退热，并观察危重征象"),
        "prevention": ("hand washing, cleaning toys and the enterovirus 71 vaccine", "勤洗手、清洁玩具并接种肠道病毒71型疫苗"),
    }),
    ("rhinitis", "allergic rhinitis", "过敏性鼻炎", {
        "cause": ("an allergic reaction to pollen, dust mites or pet dander", "对花粉、尘螨或宠物皮屑的过敏反应"),
        "symptoms": ("sneezing, a runny and itchy nose and nasal blockage", "打喷嚏、流清涕、鼻痒和鼻塞"),
        "diagnosis": ("the typical symptoms and skin prick or blood allergy tests", "典型症状结合皮肤点刺试验或血清过敏原检测"),
        "treatment": ("avoiding allergens, antihistamines and nasal corticosteroid sprays", "避免接触过敏原，使用抗组胺药和鼻用糖皮质激素"),
        "prevention": ("reducing allergen exposure at home", "减少家中过敏原暴露"),
    }),
]
